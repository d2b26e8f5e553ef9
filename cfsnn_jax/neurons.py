"""Spiking neuron family as pure JAX functions (METHOD.md §1, §2, §4).

Layout convention (stated once for the whole package): tensors are **time-major**,
``x_TB...`` has shape ``[T, B, ...]``. Stateless layers fold time into the batch
(``[T*B, ...]``); only the neuron below loops over ``T`` (``jax.lax.scan``, or a Python loop
when unrolled).

Contract:
- ``NeuronSpec`` is a frozen, hashable description of one neuron setting (charge model,
  levels ``D``, ``signed``, reset, surrogate, threshold mode). ``resolve_spec`` builds it from
  a preset name plus overrides and rejects bad values with one line naming valid choices.
- ``spike(h, theta, alpha, levels, signed, surrogate)`` is a ``jax.custom_vjp``: forward is the
  exact D-level staircase; backward is the surrogate ``sum_k g_alpha(h - k*theta)`` and it
  returns a cotangent for ``alpha`` (and ``theta``) as if the forward were the smooth
  primitive ``sum_k G_alpha(h - k*theta)``.
- ``run_neuron(x_TB, spec, alpha_T, decay, theta_T)`` charges, fires and resets over time and
  returns ``(S_TB, H_TB, theta_T)``; no hidden state, no reset calls. Its gradient is a fused
  BPTT (``bptt="fused"``, a ``custom_vjp`` with one hand-written reverse scan that keeps
  only H); ``bptt="autodiff"`` differentiates the forward scan (the reference).
- ``run_neuron_with_stats`` also returns the per-step PN / firing statistics computed in the
  same pass (what ``layers.SpikingNeuron`` uses).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

# --------------------------------------------------------------------------------------------
# Surrogate families. Each is written as a function of z = alpha * v:
#   unit derivative phi(z) = G'(z), so   g_alpha(v) = alpha * phi(alpha v)
#   and                                   dG_alpha(v)/d alpha = v * phi(alpha v).
# No raw exp: sigmoid uses jax.nn.sigmoid on both sides, the rest are rational/piecewise.
# --------------------------------------------------------------------------------------------


def _sigmoid_phi(z: Array) -> Array:
  # sigmoid(z) sigmoid(-z) = e / (1 + e)^2 with e = exp(-|z|) in (0, 1]: one exp, no overflow.
  e = jnp.exp(-jnp.abs(z))
  return e / jnp.square(1.0 + e)


def _sigmoid_prim(z: Array) -> Array:
  return jax.nn.sigmoid(z)


def _atan_phi(z: Array) -> Array:
  return 0.5 / (1.0 + jnp.square(0.5 * math.pi * z))


def _atan_prim(z: Array) -> Array:
  return jnp.arctan(0.5 * math.pi * z) / math.pi + 0.5


def _rect_phi(z: Array) -> Array:
  return (jnp.abs(z) < 0.5).astype(z.dtype)


def _rect_prim(z: Array) -> Array:
  return jnp.clip(z + 0.5, 0.0, 1.0)


def _tri_phi(z: Array) -> Array:
  return jnp.maximum(0.0, 1.0 - jnp.abs(z)).astype(z.dtype)


def _tri_prim(z: Array) -> Array:
  zc = jnp.clip(z, -1.0, 1.0)
  return jnp.where(zc < 0, 0.5 * jnp.square(1.0 + zc), 1.0 - 0.5 * jnp.square(1.0 - zc))


class Surrogate(NamedTuple):
  phi: Callable[[Array], Array]  # G'(z), z = alpha * v
  primitive: Callable[[Array], Array]  # G(z)
  default_alpha: float


SURROGATES: dict[str, Surrogate] = {
    "sigmoid": Surrogate(_sigmoid_phi, _sigmoid_prim, 4.0),
    "atan": Surrogate(_atan_phi, _atan_prim, 2.0),
    "rectangular": Surrogate(_rect_phi, _rect_prim, 1.0),
    "triangle": Surrogate(_tri_phi, _tri_prim, 1.0),
}


def surrogate_grad(name: str, v: Array, alpha: Array) -> Array:
  """g_alpha(v): the surrogate derivative of a unit step at v = 0."""
  v = jnp.asarray(v, jnp.result_type(v, jnp.float32))
  return alpha * SURROGATES[name].phi(alpha * v)


def surrogate_primitive(name: str, v: Array, alpha: Array) -> Array:
  """G_alpha(v): the smooth step whose derivative is ``surrogate_grad``."""
  v = jnp.asarray(v, jnp.result_type(v, jnp.float32))
  return SURROGATES[name].primitive(alpha * v)


# --------------------------------------------------------------------------------------------
# The spike: exact D-level staircase forward, surrogate backward (custom_vjp).
# --------------------------------------------------------------------------------------------


def staircase(h: Array, theta: Array, levels: int, signed: bool) -> Array:
  """Exact forward of METHOD.md §1 (fire): clip(floor(h/theta), 0, D), optionally signed."""
  if signed:
    return jnp.sign(h) * jnp.clip(jnp.floor(jnp.abs(h) / theta), 0, levels)
  return jnp.clip(jnp.floor(h / theta), 0, levels)


def smooth_staircase(h: Array, theta: Array, alpha: Array, levels: int, signed: bool,
                     surrogate: str) -> Array:
  """The smooth primitive sum_k G_alpha(h - k theta) whose gradients the spike's backward uses."""
  ks = jnp.arange(1, levels + 1, dtype=h.dtype)
  mag = jnp.abs(h) if signed else h
  v = mag[..., None] - ks * jnp.asarray(theta, h.dtype)[..., None]
  out = surrogate_primitive(surrogate, v, jnp.asarray(alpha, h.dtype)).sum(-1)
  return jnp.sign(h) * out if signed else out


def _sum_to_shape(x: Array, shape: tuple[int, ...], dtype: Any) -> Array:
  x = x.astype(jnp.float32)
  if x.shape != tuple(shape):
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and x.shape[lead + i] != 1)
    x = x.sum(axis=axes, keepdims=False)
    x = x.reshape(shape)
  return x.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def spike(h: Array, theta: Array, alpha: Array, levels: int, signed: bool,
          surrogate: str) -> Array:
  """D-level (optionally signed) spike with a learnable-shape surrogate gradient.

  ``theta`` and ``alpha`` broadcast against ``h`` (scalars in the neuron scan). The output
  has ``h``'s dtype. Backward returns cotangents for ``h``, ``theta`` and ``alpha`` with their
  own shapes and dtypes.
  """
  return staircase(h, jnp.asarray(theta, h.dtype), levels, signed).astype(h.dtype)


def _spike_fwd(h, theta, alpha, levels, signed, surrogate):
  return spike(h, theta, alpha, levels, signed, surrogate), (h, theta, alpha)


def _spike_bwd(levels, signed, surrogate, res, g_out):
  h, theta, alpha = res
  phi = SURROGATES[surrogate].phi
  compute = jnp.promote_types(h.dtype, jnp.float32)
  hc = h.astype(compute)
  th = jnp.asarray(theta, compute)
  al = jnp.asarray(alpha, compute)
  mag = jnp.abs(hc) if signed else hc
  sgn = jnp.sign(hc) if signed else None
  d_h = jnp.zeros_like(hc)
  d_alpha = jnp.zeros_like(hc)
  d_theta = jnp.zeros_like(hc)
  for k in range(1, levels + 1):  # D is small and static: unrolled, fused by XLA
    v = mag - k * th
    p = phi(al * v)
    d_h = d_h + al * p  # d/dh of sign(h) G(|h| - k theta) is g(|h| - k theta): sign^2 = 1
    d_alpha = d_alpha + v * p
    d_theta = d_theta - k * al * p
  go = g_out.astype(compute)
  if signed:
    d_alpha = d_alpha * sgn
    d_theta = d_theta * sgn
  ct_h = (go * d_h).astype(h.dtype)
  ct_alpha = _sum_to_shape(go * d_alpha, jnp.shape(alpha), jnp.result_type(alpha))
  ct_theta = _sum_to_shape(go * d_theta, jnp.shape(theta), jnp.result_type(theta))
  return ct_h, ct_theta, ct_alpha


spike.defvjp(_spike_fwd, _spike_bwd)

# --------------------------------------------------------------------------------------------
# Neuron settings.
# --------------------------------------------------------------------------------------------

CHARGES = ("if", "lif", "plif")
RESETS = ("soft", "hard")
SURROGATE_MODES = ("per_step", "per_layer", "fixed", "dynamic")
THRESHOLD_MODES = ("fixed", "adaptive")
DYNAMIC_STATS = ("std", "threshold")
ACTIVATIONS = ("spike", "relu")


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


def _choice(field: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f"unknown {field} {value!r}; valid choices: {', '.join(map(str, choices))}")


def resolve_spec(name: str, **overrides: Any) -> NeuronSpec:
  """Builds a validated ``NeuronSpec`` from a preset name and non-None overrides.

  ``alpha=None`` takes the surrogate family's default alpha_0. Raises ``ValueError`` with one
  line naming the valid choices (before anything is traced or compiled).
  """
  _choice("neuron", name, NEURON_PRESETS)
  fields = {f.name for f in dataclasses.fields(NeuronSpec)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown neuron field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
  kw: dict[str, Any] = dict(NEURON_PRESETS[name])
  kw.update({k: v for k, v in overrides.items() if v is not None})
  _choice("surrogate", kw.get("surrogate", "sigmoid"), SURROGATES)
  if "alpha" not in kw:
    kw["alpha"] = SURROGATES[kw.get("surrogate", "sigmoid")].default_alpha
  spec = NeuronSpec(**kw)
  validate_spec(spec)
  return spec


def validate_spec(spec: NeuronSpec) -> None:
  """Raises ValueError (one line) for impossible settings."""
  _choice("charge", spec.charge, CHARGES)
  _choice("reset", spec.reset, RESETS)
  _choice("surrogate", spec.surrogate, SURROGATES)
  _choice("surrogate_mode", spec.surrogate_mode, SURROGATE_MODES)
  _choice("threshold_mode", spec.threshold_mode, THRESHOLD_MODES)
  _choice("dynamic_stat", spec.dynamic_stat, DYNAMIC_STATS)
  _choice("activation", spec.activation, ACTIVATIONS)
  if int(spec.levels) != spec.levels or spec.levels < 1:
    raise ValueError(f"neuron levels D must be an integer >= 1, got {spec.levels}")
  if not spec.threshold > 0:
    raise ValueError(f"neuron threshold must be > 0, got {spec.threshold}")
  if not spec.alpha > 0:
    raise ValueError(f"surrogate alpha must be > 0, got {spec.alpha}")
  if spec.charge == "lif" and not spec.tau >= 1:
    raise ValueError(f"LIF tau must be >= 1 (decay = 1 - 1/tau in [0, 1)), got {spec.tau}")
  if spec.charge == "plif" and not 0 < spec.decay_init < 1:
    raise ValueError(f"PLIF decay_init must be in (0, 1), got {spec.decay_init}")
  if spec.dynamic_base_width <= 0:
    raise ValueError(f"dynamic_base_width must be > 0, got {spec.dynamic_base_width}")


def validate_num_steps(num_steps: int) -> None:
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f"num_steps T must be an integer >= 1, got {num_steps}")


# --------------------------------------------------------------------------------------------
# DS-ATGO statistics (METHOD.md §4).
# --------------------------------------------------------------------------------------------


def adaptive_threshold(h: Array, fc: float) -> Array:
  """theta_t = f_c (mean(H_t) + std(H_t)) over every axis (batch, channels, space); unbiased
  std; no gradient. Under jit on a sharded H this is the global-batch statistic."""
  h = jax.lax.stop_gradient(h).astype(jnp.float32)
  return fc * (jnp.mean(h) + jnp.std(h, ddof=1))


def dynamic_width(delta: Array, base_width: float) -> Array:
  """DS-ATGO width rule: k (1 - tanh(1 - delta)) if delta < 1 else k (1 + tanh(delta - 1))."""
  return jnp.where(delta < 1, base_width * (1 - jnp.tanh(1 - delta)),
                   base_width * (1 + jnp.tanh(delta - 1)))


# --------------------------------------------------------------------------------------------
# Charge / fire / reset over time.
# --------------------------------------------------------------------------------------------


def lif_decay(spec: NeuronSpec) -> float:
  """Fixed decay lambda for IF / LIF (PLIF's is a parameter: sigmoid(w))."""
  return 1.0 if spec.charge == "if" else 1.0 - 1.0 / spec.tau


def _fired(h: Array, s: Array, theta: Array, alpha: Array, spec: NeuronSpec) -> Array:
  """Indicator [S != 0] with a surrogate gradient, used by hard reset.

  For the binary unsigned spike it is S itself. For multi-level / signed spikes it is the
  one-level spike of |H| (same surrogate), so the reset keeps a gradient path.
  """
  if spec.levels == 1 and not spec.signed:
    return s
  mag = jnp.abs(h) if spec.signed else h
  return spike(mag, theta, alpha, 1, False, spec.surrogate)


BPTT_MODES = ("fused", "autodiff")


class PotentialStats(NamedTuple):
  """Per-step statistics of H (and S) computed inside the neuron, each ``[T]`` float32."""
  h_pos_T: Array  # mean(relu(H_t)) over batch and features
  h_neg_T: Array  # mean(relu(-H_t))
  h_tanh_T: Array  # mean(tanh(kappa H_t))
  rate_T: Array  # mean(|S_t|) (no gradient)


def run_neuron(x_TB: Array, spec: NeuronSpec, *, alpha_T: Array, decay: Array | float,
               theta_T: Array | None = None, training: bool = True,
               unroll: int | bool = 1, bptt: str = "fused") -> tuple[Array, Array, Array]:
  """Runs the neuron over time.

  Args:
    x_TB: input current ``[T, B, ...]``.
    spec: the neuron setting.
    alpha_T: surrogate sharpness per step, shape ``[T]`` (ignored for ``dynamic``).
    decay: lambda (scalar; PLIF passes sigmoid(w), differentiable).
    theta_T: threshold per step ``[T]``. Fixed mode: the base threshold; adaptive mode: the
      EMA used at evaluation (ignored when ``training``).
    training: adaptive threshold computed from H_t statistics when True.
    unroll: the forward time loop: ``lax.scan``'s ``unroll``; ``True`` (or ``>= T``) runs it
      as a Python loop (no while loop: XLA fuses across steps; what ``SpikingNeuron`` does
      for T <= 16). The backward is a reverse ``lax.scan`` in either case.
    bptt: ``fused`` (default): a ``custom_vjp`` whose backward is one hand-written reverse
      scan that keeps only ``H`` (and the per-step thresholds / sharpness) from the forward;
      ``autodiff``: ``jax`` differentiates the forward scan (the reference; more residuals).
      Both give the same values and gradients (tests/test_performance.py).

  Returns:
    ``S_TB`` (spikes, x's dtype), ``H_TB`` (pre-fire potential), ``theta_T`` (thresholds used,
    float32; adaptive training mode: the fresh batch statistics for the EMA update).
  """
  if bptt not in BPTT_MODES:
    raise ValueError(f"unknown bptt {bptt!r}; valid choices: {', '.join(BPTT_MODES)}")
  x_TB, alpha_T, decay, theta_T = _prepare(x_TB, spec, alpha_T, decay, theta_T)
  use_adaptive = spec.adaptive and training
  if bptt == "autodiff":
    return _run_neuron_autodiff(x_TB, spec, alpha_T, decay, theta_T, use_adaptive, unroll)
  S_TB, H_TB, theta_used_T, _, _ = _neuron_fused(x_TB, alpha_T, decay, theta_T, spec,
                                                 use_adaptive, unroll, True, None)
  return S_TB, H_TB, theta_used_T


def run_neuron_with_stats(x_TB: Array, spec: NeuronSpec, *, alpha_T: Array,
                          decay: Array | float, theta_T: Array | None = None,
                          training: bool = True, unroll: int | bool = 1,
                          pn_kappa: float = 1.0, keep_potential: bool = False
                          ) -> tuple[Array, Array | None, Array, PotentialStats]:
  """``run_neuron`` that also returns the per-step ``PotentialStats`` of H, computed in the
  same pass (the fused BPTT path). The statistics' cotangents enter the backward scan as
  ``[T]`` vectors, so no ``[T, B, ...]`` gradient of H is ever materialised; ``H_TB`` is
  returned only with ``keep_potential`` (analysis probes). Returns
  ``(S_TB, H_TB or None, theta_used_T, stats)``."""
  x_TB, alpha_T, decay, theta_T = _prepare(x_TB, spec, alpha_T, decay, theta_T)
  S_TB, H_TB, theta_used_T, _, stats = _neuron_fused(
      x_TB, alpha_T, decay, theta_T, spec, spec.adaptive and training, unroll,
      keep_potential, float(pn_kappa))
  return S_TB, H_TB, theta_used_T, PotentialStats(*stats)


def _prepare(x_TB, spec, alpha_T, decay, theta_T):
  T = x_TB.shape[0]
  if theta_T is None:
    theta_T = jnp.full((T,), spec.threshold, jnp.float32)
  alpha_T = jnp.broadcast_to(jnp.asarray(alpha_T, jnp.float32), (T,))
  theta_T = jnp.broadcast_to(jnp.asarray(theta_T, jnp.float32), (T,))
  return x_TB, alpha_T, jnp.asarray(decay, jnp.float32), theta_T


def _step_threshold_alpha(h: Array, theta_t: Array, alpha_t: Array, spec: NeuronSpec,
                          use_adaptive: bool) -> tuple[Array, Array]:
  """The threshold and sharpness a step uses (DS-ATGO: from H_t's statistics, no gradient)."""
  if use_adaptive:
    theta_t = adaptive_threshold(h, spec.adaptive_fc)
  theta_t = jax.lax.stop_gradient(theta_t) if spec.adaptive else theta_t
  if spec.surrogate_mode == "dynamic":
    stat = (jnp.std(jax.lax.stop_gradient(h).astype(jnp.float32), ddof=1)
            if spec.dynamic_stat == "std" else theta_t)
    alpha_t = jax.lax.stop_gradient(1.0 / dynamic_width(stat, spec.dynamic_base_width))
  return theta_t, alpha_t


def _run_neuron_autodiff(x_TB, spec, alpha_T, decay, theta_T, use_adaptive, unroll):
  """The forward scan written with the ``spike`` custom_vjp; JAX derives the backward."""
  dtype = x_TB.dtype
  lam = decay.astype(dtype)
  in_scale = (1 - decay).astype(dtype) if spec.decay_input else None

  def step(u_prev, inputs):
    x_t, alpha_t, theta_t = inputs
    h = lam * u_prev + (x_t * in_scale if in_scale is not None else x_t)
    theta_t, alpha_t = _step_threshold_alpha(h, theta_t, alpha_t, spec, use_adaptive)
    th = theta_t.astype(dtype)
    s = spike(h, th, alpha_t, spec.levels, spec.signed, spec.surrogate)
    reset_s = jax.lax.stop_gradient(s) if spec.detach_reset else s
    if spec.reset == "soft":
      u = h - reset_s * th
    else:
      fired = _fired(h, s, th, alpha_t, spec)
      fired = jax.lax.stop_gradient(fired) if spec.detach_reset else fired
      u = h * (1 - fired) + spec.v_reset * fired
    return u, (s, h, theta_t)

  u0 = jnp.zeros(x_TB.shape[1:], dtype)
  _, (S_TB, H_TB, theta_used_T) = jax.lax.scan(step, u0, (x_TB, alpha_T, theta_T),
                                                unroll=unroll)
  return S_TB, H_TB, theta_used_T


# --------------------------------------------------------------------------------------------
# Fused BPTT: forward time loop + one hand-written reverse scan (a custom_vjp).
#
# Forward per step:  h = lam u' + c x  (c = 1, or 1 - lam for decay_input);  s = stair(h);
#   soft: u = h - s~ theta;  hard: u = h (1 - f~) + v_r f~  (f = s for the binary spike, else
#   the one-level spike of |h|; ~ = stop_gradient under detach_reset).
# Backward per step, t = T-1 .. 0, with du = dL/du_t carried from step t+1:
#   dh = gH + (soft: du | hard: du (1 - f));   ds = gS (+ soft: -theta du | hard, binary:
#   du (v_r - h), when not detached);  dh += ds sum_k g(h - k theta) (+ the fired spike's
#   surrogate for hard multi-level resets);  dx = c dh;  du' = lam dh;
#   dlam += sum dh u' (- sum dh x for decay_input);  dalpha_t, dtheta_t as in ``spike``.
#   gH includes the cotangents of the PotentialStats (per-step [T] vectors).
# Residuals: H, the thresholds and sharpness used, lam (and x for decay_input); u' and s are
# recomputed from H. Memory layout choices for XLA:CPU (measured, docs/PERFORMANCE.md):
# - the forward is a Python loop when fully unrolled: a while loop's stacked outputs start as
#   constant buffers, which XLA:CPU allocates at program start;
# - the backward overwrites gS with dx in place (its buffer exists only once gS does) and
#   everything it computes is tied to the cotangent (``after_cotangent``), so no backward
#   work is hoisted into the forward pass.
# --------------------------------------------------------------------------------------------


def after_cotangent(tree: Any, g: Any) -> Any:
  """``tree`` with every floating leaf made to depend on the cotangent ``g`` (its first leaf).

  Backward-pass work that needs only forward values (the surrogate derivatives need only H;
  a rematerialised block needs only its saved inputs) may otherwise be scheduled by XLA:CPU
  during the forward pass, its results kept alive until the backward, which costs the memory
  that recomputation was meant to save; ``lax.optimization_barrier`` does not prevent it on
  that backend. The dependency is exact arithmetic: ``leaf + 0 * s`` with ``s`` a finite sum
  of a few cotangent elements (a reduction, so XLA computes it once instead of inside every
  consumer's loop).
  """
  flat = jnp.ravel(jax.tree.leaves(g)[0])
  s = jnp.sum(flat[:min(flat.size, 8)].astype(jnp.float32))
  zero = jnp.where(jnp.isfinite(s), s, 0.0) * 0.0

  def tie(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating) and x.size:
      return x + zero.astype(x.dtype)
    return x
  return jax.tree.map(tie, tree)


def _reset(h: Array, s: Array, th: Array, spec: NeuronSpec) -> Array:
  """u_t from h_t and s_t (forward values only; same arithmetic as the autodiff path)."""
  if spec.reset == "soft":
    return h - s * th
  fired = _fired_value(h, s, th, spec)
  return h * (1 - fired) + spec.v_reset * fired


def _fired_value(h: Array, s: Array, th: Array, spec: NeuronSpec) -> Array:
  if spec.levels == 1 and not spec.signed:
    return s
  mag = jnp.abs(h) if spec.signed else h
  return staircase(mag, th, 1, False).astype(h.dtype)


def _full_unroll(unroll: int | bool, T: int) -> bool:
  return unroll is True or (unroll is not False and int(unroll) >= T)


def _mean_over_batch(x: Array) -> Array:
  return jnp.mean(x, axis=tuple(range(x.ndim)))


def _fused_forward(x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll, kappa):
  dtype = x_TB.dtype
  T = x_TB.shape[0]
  lam = decay.astype(dtype)
  in_scale = (1 - decay).astype(dtype) if spec.decay_input else None

  def step(u_prev, inputs):
    x_t, alpha_t, theta_t = inputs
    h = lam * u_prev + (x_t * in_scale if in_scale is not None else x_t)
    theta_t, alpha_t = _step_threshold_alpha(h, theta_t, alpha_t, spec, use_adaptive)
    th = theta_t.astype(dtype)
    s = staircase(h, th, spec.levels, spec.signed).astype(dtype)
    stats = None
    if kappa is not None:
      h32 = h.astype(jnp.float32)
      stats = (_mean_over_batch(jax.nn.relu(h32)), _mean_over_batch(jax.nn.relu(-h32)),
               _mean_over_batch(jnp.tanh(kappa * h32)),
               _mean_over_batch(jnp.abs(s.astype(jnp.float32))))
    return _reset(h, s, th, spec), (s, h, theta_t, jnp.asarray(alpha_t, jnp.float32), stats)

  u0 = jnp.zeros(x_TB.shape[1:], dtype)
  xs = (x_TB, alpha_T, theta_T)
  if _full_unroll(unroll, T):
    ys = []
    for t in range(T):
      u0, y = step(u0, jax.tree.map(lambda a: a[t], xs))
      ys.append(y)
    return jax.tree.map(lambda *a: jnp.stack(a), *ys)
  return jax.lax.scan(step, u0, xs, unroll=unroll)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _neuron_fused(x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll, keep_potential,
                  kappa):
  S_TB, H_TB, theta_used_T, alpha_used_T, stats = _fused_forward(
      x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll, kappa)
  return S_TB, (H_TB if keep_potential else None), theta_used_T, alpha_used_T, stats


def _neuron_fused_fwd(x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll,
                      keep_potential, kappa):
  x_TB, alpha_T, decay, theta_T = (a.value for a in (x_TB, alpha_T, decay, theta_T))
  S_TB, H_TB, theta_used_T, alpha_used_T, stats = _fused_forward(
      x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll, kappa)
  out = (S_TB, (H_TB if keep_potential else None), theta_used_T, alpha_used_T, stats)
  res = (H_TB, theta_used_T, alpha_used_T, decay, x_TB if spec.decay_input else None)
  return out, res


def _zero(ct: Any) -> bool:
  return isinstance(ct, jax.custom_derivatives.SymbolicZero)


def _neuron_fused_bwd(spec, use_adaptive, unroll, keep_potential, kappa, res, cts):
  H_TB, theta_used_T, alpha_used_T, decay, x_TB = res
  gS_TB, gH_TB, gtheta_T, _, gstats = cts
  dtype = H_TB.dtype
  f32 = jnp.float32
  T = H_TB.shape[0]
  n = H_TB[0].size  # elements per step (the statistics' means)
  phi = SURROGATES[spec.surrogate].phi
  lam = decay.astype(f32)
  c = (1 - decay).astype(f32) if spec.decay_input else None
  binary = spec.levels == 1 and not spec.signed
  detach = spec.detach_reset
  gS_TB = jnp.zeros(H_TB.shape, dtype) if _zero(gS_TB) else gS_TB.astype(dtype)
  g_pos, g_neg, g_tanh = ((None,) * 3 if gstats is None or _zero(gstats) else
                          tuple(None if _zero(g) else g for g in gstats[:3]))
  # Nothing below may run before the cotangent exists (see after_cotangent).
  theta_used_T, alpha_used_T, stat_cts = after_cotangent(
      (theta_used_T, alpha_used_T, (g_pos, g_neg, g_tanh)), gS_TB)

  def u_before(t):
    """u_{t-1} recomputed from H_{t-1} (0 before the first step), float32."""
    tp = jnp.maximum(t - 1, 0)
    h = jax.lax.dynamic_index_in_dim(H_TB, tp, keepdims=False)
    th = jax.lax.dynamic_index_in_dim(theta_used_T, tp, keepdims=False).astype(dtype)
    s = staircase(h, th, spec.levels, spec.signed).astype(dtype)
    u = _reset(h, s, th, spec).astype(f32)
    return jnp.where(t > 0, u, jnp.zeros_like(u))

  def step(carry, inputs):
    du, dlam, G = carry  # G: gS, overwritten in place with dx from the last step down
    t, theta_t, alpha_t, gp, gn, gt = inputs
    h = jax.lax.dynamic_index_in_dim(H_TB, t, keepdims=False)
    th_d = theta_t.astype(dtype)
    s = staircase(h, th_d, spec.levels, spec.signed).astype(f32)
    hc = h.astype(f32)
    th = th_d.astype(f32)
    al = alpha_t
    mag = jnp.abs(hc) if spec.signed else hc
    sgn = jnp.sign(hc) if spec.signed else None
    ds = jax.lax.dynamic_index_in_dim(G, t, keepdims=False).astype(f32)
    dh = (jnp.zeros_like(hc) if gH_TB is None or _zero(gH_TB) else
          jax.lax.dynamic_index_in_dim(gH_TB, t, keepdims=False).astype(f32))
    if gp is not None:
      dh = dh + (gp / n) * (hc > 0)
    if gn is not None:
      dh = dh - (gn / n) * (hc < 0)
    if gt is not None:
      dh = dh + (gt * kappa / n) * (1 - jnp.square(jnp.tanh(kappa * hc)))
    dalpha = jnp.zeros((), f32)
    dtheta = jnp.zeros((), f32)
    if spec.reset == "soft":
      dh = dh + du
      if not detach:
        ds = ds - th * du
      dtheta = dtheta - jnp.sum(s * du)
    else:
      fired = _fired_value(h, s.astype(dtype), th_d, spec).astype(f32)
      dh = dh + du * (1 - fired)
      if not detach:
        dfired = du * (spec.v_reset - hc)
        if binary:
          ds = ds + dfired
        else:  # the one-level spike of |h|: its own surrogate term
          v1 = mag - th
          p1 = phi(al * v1)
          dh = dh + dfired * al * p1 * (sgn if spec.signed else 1.0)
          dalpha = dalpha + jnp.sum(dfired * v1 * p1)
          dtheta = dtheta - jnp.sum(dfired * al * p1)
    d_h = d_alpha = d_theta = 0.0
    for k in range(1, spec.levels + 1):  # D is small and static: unrolled, fused by XLA
      v = mag - k * th
      p = phi(al * v)
      d_h = d_h + al * p
      d_alpha = d_alpha + v * p
      d_theta = d_theta - k * al * p
    dh = dh + ds * d_h
    ds_signed = ds * sgn if spec.signed else ds
    dalpha = dalpha + jnp.sum(ds_signed * d_alpha)
    dtheta = dtheta + jnp.sum(ds_signed * d_theta)
    dlam = dlam + jnp.sum(dh * u_before(t))
    if c is None:
      dx = dh
    else:
      x_t = jax.lax.dynamic_index_in_dim(x_TB, t, keepdims=False).astype(f32)
      dlam = dlam - jnp.sum(dh * x_t)
      dx = c * dh
    G = jax.lax.dynamic_update_index_in_dim(G, dx.astype(dtype), t, 0)
    return (lam * dh, dlam, G), (dalpha, dtheta)

  carry0 = after_cotangent((jnp.zeros(H_TB.shape[1:], f32), jnp.zeros((), f32)), gS_TB)
  xs = (jnp.arange(T), theta_used_T, alpha_used_T) + tuple(stat_cts)
  # The backward is never fully unrolled: XLA would fuse the T steps' recurrence into one
  # loop that re-evaluates it per output step (quadratic in T).
  bwd_unroll = 1 if _full_unroll(unroll, T) else unroll
  (_, dlam, dx_TB), (dalpha_T, dtheta_T) = jax.lax.scan(
      step, carry0 + (gS_TB,), xs, reverse=True, unroll=bwd_unroll)
  if spec.surrogate_mode == "dynamic":  # alpha came from H's statistics (no gradient)
    dalpha_T = jnp.zeros_like(dalpha_T)
  if spec.adaptive:  # stop_gradient on the threshold
    dtheta_T = jnp.zeros_like(dtheta_T)
  elif not _zero(gtheta_T):  # fixed thresholds pass through to the theta_used output
    dtheta_T = dtheta_T + gtheta_T.astype(f32)
  return dx_TB, dalpha_T, dlam.astype(decay.dtype), dtheta_T


_neuron_fused.defvjp(_neuron_fused_fwd, _neuron_fused_bwd, symbolic_zeros=True)


def alpha_from_rho(rho: Array) -> Array:
  """alpha = softplus(rho) (positive)."""
  return jax.nn.softplus(rho)


def rho_for_alpha(alpha0: float) -> float:
  """Inverse softplus, so that softplus(rho) == alpha0 at initialisation."""
  return float(alpha0 + math.log(-math.expm1(-alpha0)))


def gradient_available(h: Array, theta: Array, alpha: Array, spec: NeuronSpec) -> Array:
  """Boolean mask of potentials whose surrogate gradient is available (METHOD.md §4 analysis).

  Compact families (rectangular, triangle): inside the support of g_alpha around some level
  k*theta. Smooth families (sigmoid, atan): g_alpha(v) >= 1% of its peak.
  """
  ks = jnp.arange(1, spec.levels + 1, dtype=jnp.float32)
  mag = jnp.abs(h) if spec.signed else h
  v = mag.astype(jnp.float32)[..., None] - ks * jnp.asarray(theta, jnp.float32)
  phi = SURROGATES[spec.surrogate].phi
  p = phi(jnp.asarray(alpha, jnp.float32) * v)
  if spec.surrogate in ("rectangular", "triangle"):
    return (p > 0).any(-1)
  return (p >= 0.01 * phi(jnp.zeros((), jnp.float32))).any(-1)
