"""What a neuron is, as data: ``NeuronSpec``, the named presets and their validation (no jax).

Contract:
- ``NeuronSpec`` is a frozen, hashable description of one neuron setting (charge model,
  levels ``D``, ``signed``, reset, surrogate, threshold mode); the equations it selects are in
  ``neurons.py`` (METHOD.md §1, §2, §4).
- ``resolve_spec(name, **overrides)`` builds it from a preset of ``NEURON_PRESETS`` plus the
  non-None overrides; ``validate_spec`` rejects impossible settings. Both raise
  ``errors.UserError`` with one line naming the value and the valid choices.
- ``spec_dict(spec)``: every field of the resolved spec as a plain JSON-able dict (what a
  workdir records, so a later change of a preset cannot change what an old run meant).
- The name tuples (``CHARGES``, ``RESETS``, ``SURROGATE_NAMES``, ...) are the valid choices.
Importable without jax or flax: the config layer validates through this module alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cfsnn_jax.errors import UserError, unknown_choice

CHARGES = ("if", "lif", "plif")
RESETS = ("soft", "hard")
SURROGATE_MODES = ("per_step", "per_layer", "fixed", "dynamic")
THRESHOLD_MODES = ("fixed", "adaptive")
DYNAMIC_STATS = ("std", "threshold")
ACTIVATIONS = ("spike", "relu")
BPTT_MODES = ("fused", "autodiff")  # neurons.run_neuron(bptt=...): fast path | reference
# Surrogate families (their functions are in neurons.SURROGATES) and each one's default alpha_0.
SURROGATE_DEFAULT_ALPHA: dict[str, float] = {
    "sigmoid": 4.0, "atan": 2.0, "rectangular": 1.0, "triangle": 1.0}
SURROGATE_NAMES = tuple(SURROGATE_DEFAULT_ALPHA)


@dataclasses.dataclass(frozen=True)
class NeuronSpec:
  """One neuron setting. Hashable, so it can be a static argument of jitted code."""
  charge: str = "lif"  # if | lif | plif (METHOD.md §1)
  tau: float = 2.0  # LIF time constant: decay = 1 - 1/tau
  decay_init: float = 0.5  # PLIF: initial decay sigmoid(w)
  levels: int = 1  # D: maximum spikes per step
  signed: bool = False  # ternary / signed multi-level firing
  reset: str = "hard"  # soft (subtract) | hard (to v_reset)
  v_reset: float = 0.0
  detach_reset: bool = False  # stop_gradient on the reset term
  decay_input: bool = False  # SpikingJelly form H = l U + (1 - l) x
  threshold: float = 1.0  # base threshold theta
  threshold_mode: str = "fixed"  # fixed | adaptive (DS-ATGO forward AT)
  adaptive_fc: float = 1.0  # DS-ATGO f_c
  adaptive_momentum: float = 0.1  # DS-ATGO EMA momentum m
  surrogate: str = "sigmoid"  # sigmoid | atan | rectangular | triangle
  alpha: float = 4.0  # initial sharpness alpha_0
  surrogate_mode: str = "per_step"  # per_step | per_layer | fixed | dynamic (DS-ATGO TGO)
  dynamic_stat: str = "std"  # DS-ATGO width statistic: std (official code) | threshold (paper)
  dynamic_base_width: float = 1.0  # DS-ATGO k
  activation: str = "spike"  # spike | relu (the ANN twin: ReLU in place of the neuron, T = 1)

  @property
  def learnable_alpha(self) -> bool:
    return self.surrogate_mode in ("per_step", "per_layer")

  @property
  def adaptive(self) -> bool:
    return self.threshold_mode == "adaptive"


# Named presets (the config's ``neuron.name``); explicit config fields override them.
NEURON_PRESETS: dict[str, dict[str, Any]] = {
    "if": dict(charge="if", levels=1, signed=False, reset="hard"),
    "lif": dict(charge="lif", levels=1, signed=False, reset="hard"),
    "plif": dict(charge="plif", levels=1, signed=False, reset="hard"),
    # Circulate-firing: D = 4 unsigned, soft reset (METHOD.md §1 default).
    "cf": dict(charge="lif", levels=4, signed=False, reset="soft"),
    "cf_signed": dict(charge="lif", levels=4, signed=True, reset="soft"),
    # DS-ATGO (METHOD.md §4): PLIF decay 0.2, hard reset, binary spike, adaptive threshold,
    # rectangular surrogate of dynamic width.
    "dsatgo": dict(charge="plif", decay_init=0.2, levels=1, signed=False, reset="hard",
                   threshold_mode="adaptive", surrogate="rectangular",
                   surrogate_mode="dynamic"),
}
PRESET_NAMES = tuple(NEURON_PRESETS)
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(NeuronSpec))


def _choice(field: str, value: Any, choices) -> None:
  if value not in choices:
    raise unknown_choice(field, value, choices)


def resolve_spec(name: str, **overrides: Any) -> NeuronSpec:
  """Builds a validated ``NeuronSpec`` from a preset name and non-None overrides.

  ``alpha=None`` takes the surrogate family's default alpha_0. Raises ``UserError`` with one
  line naming the valid choices (before anything is traced or compiled).
  """
  _choice("neuron", name, NEURON_PRESETS)
  unknown = sorted(set(overrides) - set(FIELD_NAMES))
  if unknown:
    raise UserError(f"unknown neuron field(s) {unknown}; valid fields: "
                    f"{', '.join(sorted(FIELD_NAMES))}")
  kw: dict[str, Any] = dict(NEURON_PRESETS[name])
  kw.update({k: v for k, v in overrides.items() if v is not None})
  _choice("surrogate", kw.get("surrogate", "sigmoid"), SURROGATE_NAMES)
  if "alpha" not in kw:
    kw["alpha"] = SURROGATE_DEFAULT_ALPHA[kw.get("surrogate", "sigmoid")]
  spec = NeuronSpec(**kw)
  validate_spec(spec)
  return spec


def validate_spec(spec: NeuronSpec) -> None:
  """Raises UserError (one line) for impossible settings."""
  _choice("charge", spec.charge, CHARGES)
  _choice("reset", spec.reset, RESETS)
  _choice("surrogate", spec.surrogate, SURROGATE_NAMES)
  _choice("surrogate_mode", spec.surrogate_mode, SURROGATE_MODES)
  _choice("threshold_mode", spec.threshold_mode, THRESHOLD_MODES)
  _choice("dynamic_stat", spec.dynamic_stat, DYNAMIC_STATS)
  _choice("activation", spec.activation, ACTIVATIONS)
  if int(spec.levels) != spec.levels or spec.levels < 1:
    raise UserError(f"neuron levels D must be an integer >= 1, got {spec.levels}")
  if not spec.threshold > 0:
    raise UserError(f"neuron threshold must be > 0, got {spec.threshold}")
  if not spec.alpha > 0:
    raise UserError(f"surrogate alpha must be > 0, got {spec.alpha}")
  if spec.charge == "lif" and not spec.tau >= 1:
    raise UserError(f"LIF tau must be >= 1 (decay = 1 - 1/tau in [0, 1)), got {spec.tau}")
  if spec.charge == "plif" and not 0 < spec.decay_init < 1:
    raise UserError(f"PLIF decay_init must be in (0, 1), got {spec.decay_init}")
  if spec.dynamic_base_width <= 0:
    raise UserError(f"dynamic_base_width must be > 0, got {spec.dynamic_base_width}")
  _refuse_inert(spec)


def _refuse_inert(spec: NeuronSpec) -> None:
  """Settings under which the neuron cannot charge, cannot fire, or fires whatever its input
  (docs/DECISIONS.md, issue 14): one line each."""
  if spec.activation != "spike":
    return
  if spec.charge == "lif" and not math.isfinite(spec.tau):
    raise UserError(f"LIF tau must be finite (tau = inf is IF: use neuron.charge=if), got "
                    f"{spec.tau}")
  if spec.decay_input and spec.charge == "if":
    raise UserError("neuron.decay_input=True with charge=if scales the input by 1 - lambda = 0: "
                    "the neuron never charges; use charge=lif or plif, or decay_input=False")
  if spec.adaptive and not spec.adaptive_fc > 0:
    raise UserError(f"adaptive_fc must be > 0 (theta = f_c (mean + std)), got "
                    f"{spec.adaptive_fc}")
  if spec.adaptive and not 0 < spec.adaptive_momentum <= 1:
    raise UserError(f"adaptive_momentum must be in (0, 1] (the threshold EMA never moves at 0), "
                    f"got {spec.adaptive_momentum}")
  if spec.reset == "hard" and not spec.adaptive and not spec.v_reset < spec.threshold:
    raise UserError(f"hard reset needs v_reset < threshold (else a neuron that fired once "
                    f"fires on every later non-negative input), got v_reset={spec.v_reset}, "
                    f"threshold={spec.threshold}")


def validate_num_steps(num_steps: int) -> None:
  if int(num_steps) != num_steps or num_steps < 1:
    raise UserError(f"num_steps T must be an integer >= 1, got {num_steps}")


def spec_dict(spec: NeuronSpec) -> dict[str, Any]:
  """Every field of ``spec`` (after the preset and overrides) as a plain dict."""
  return dataclasses.asdict(spec)


def lif_decay(spec: NeuronSpec) -> float:
  """Fixed decay lambda for IF / LIF (PLIF's is a parameter: sigmoid(w))."""
  return 1.0 if spec.charge == "if" else 1.0 - 1.0 / spec.tau
