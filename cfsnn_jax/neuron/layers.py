"""Flax NNX spiking layers that own the neuron's parameters (METHOD.md §1–§4).

Contract:
- ``SpikingNeuron(spec, num_steps)`` owns the learnable surrogate logits ``rho`` (``[T]`` for
  ``per_step``, scalar for ``per_layer``, none for ``fixed`` / ``dynamic``), the PLIF decay
  logit ``w`` and, for the DS-ATGO adaptive threshold, the EMA ``theta_ema`` ``[T]`` (a
  ``nnx.BatchStat``: model state, saved in checkpoints, used in eval mode). The equations are
  in ``neurons`` (``neurons.neuron_step``); the layer runs them through the fast path
  ``neurons_fused.run_neuron_with_stats`` (``bptt="fused"``, default) or the reference
  (``bptt="autodiff"``).
- ``__call__(x_TB) -> (S_TB, NeuronStats)``: spikes plus per-step statistics the losses and
  analyses need (PN moments, firing rate, thresholds). Nothing is kept between calls except
  the EMA update, which is an explicit state update like BatchNorm's.
- ``model.train()`` / ``model.eval()`` toggle ``use_running_average`` as for BatchNorm.
- Analysis only: with ``model.set_attributes(probe=True)`` every neuron ``sow``s its
  ``potential_TB``, ``spikes_TB``, ``theta_T`` and ``surrogate_alpha_T`` as
  ``nnx.Intermediate``; run the model under ``nnx.capture(model, nnx.Intermediate)`` to get
  them back. Training never sets ``probe``, so the train step carries no extra state.
- ``fold`` / ``unfold`` move between ``[T, B, ...]`` and ``[T*B, ...]``; ``per_step(layer,
  x_TB)`` applies a stateless layer (conv, linear, pooling) on the folded ``[T*B, ...]``.
- ``neuron_parameters(model)`` / ``neuron_scalars(model)``: each spiking layer's learned
  alpha, DS-ATGO EMA threshold and decay (``layer_name``: its module path), for logs.
- ``spec.activation == "relu"``: the ANN twin (performance reference): ReLU in place of the
  neuron, no parameters, an all-zero ``NeuronStats`` of the same shape.
- ``remat=True`` checkpoints the neuron (``backends.checkpoint``: its backward recomputes the
  time loop from the input); ``scan_unroll=None`` (default) takes
  ``neurons_fused.AUTO`` (``default_unroll(T)`` where lowered for the CPU, a scan elsewhere).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfsnn_jax import backends
from cfsnn_jax.errors import UserError
from cfsnn_jax.neuron import equations as neurons, fused as neurons_fused, spec as neuron_spec
from cfsnn_jax.neuron.equations import NeuronStats

NeuronAux = NeuronStats  # the name models and tests used before the two types were merged


def fold(x_TB: jax.Array) -> jax.Array:
  """[T, B, ...] -> [T*B, ...]."""
  return x_TB.reshape((-1,) + x_TB.shape[2:])


def unfold(x_N: jax.Array, num_steps: int) -> jax.Array:
  """[T*B, ...] -> [T, B, ...]."""
  return x_N.reshape((num_steps, -1) + x_N.shape[1:])


def per_step(layer: Callable[[jax.Array], jax.Array], x_TB: jax.Array) -> jax.Array:
  """A stateless ``layer`` applied to every step at once: ``unfold(layer(fold(x_TB)), T)``."""
  return unfold(layer(fold(x_TB)), x_TB.shape[0])


def neuron_forward(x_TB: jax.Array, alpha_T: jax.Array, decay: jax.Array,
                   theta_T: jax.Array | None, *, spec: neurons.NeuronSpec, training: bool,
                   unroll: int | bool, pn_kappa: float, keep_potential: bool = False,
                   bptt: str = "fused") -> tuple[jax.Array, NeuronStats, jax.Array | None]:
  """Pure forward of one spiking layer: ``(S_TB, stats, H_TB or None)``; a function of
  explicit arguments, so that ``backends.checkpoint`` can wrap it
  (``SpikingNeuron(remat=True)``)."""
  S_TB, H_TB, stats = neurons_fused.run_neuron_with_stats(
      x_TB, spec, alpha_T=alpha_T, decay=decay, theta_T=theta_T, training=training,
      unroll=unroll, pn_kappa=pn_kappa, keep_potential=keep_potential, bptt=bptt)
  return S_TB, stats, H_TB


def _set_settings(obj, spec: neurons.NeuronSpec, num_steps: int, pn_kappa: float,
                  scan_unroll: int | bool | None, remat: bool, bptt: str) -> None:
  """Stores the settings a neuron layer (and its factory) is built from; ``spec`` is valid by
  construction (``NeuronSpec``), ``num_steps`` is checked here."""
  if not isinstance(spec, neuron_spec.NeuronSpec):
    raise UserError(f"a neuron layer takes a NeuronSpec (neuron.resolve_spec(name, ...)), got "
                    f"{type(spec).__name__}")
  neuron_spec.validate_num_steps(num_steps)
  obj.spec, obj.num_steps, obj.pn_kappa = spec, num_steps, pn_kappa
  obj.scan_unroll, obj.remat, obj.bptt = scan_unroll, remat, bptt


class SpikingNeuron(nnx.Module):
  """The neuron of one layer; parameters live here, dynamics in ``neurons.neuron_step``."""

  def __init__(self, spec: neurons.NeuronSpec, num_steps: int, *, pn_kappa: float = 1.0,
               scan_unroll: int | bool | None = None, remat: bool = False,
               bptt: str = "fused"):
    _set_settings(self, spec, num_steps, pn_kappa, scan_unroll, remat, bptt)
    self.use_running_average = False
    self.probe = False
    rho0 = neurons.rho_for_alpha(spec.alpha)
    if spec.activation == "relu":  # the ANN twin owns no neuron parameters
      self.rho = self.decay_logit = self.theta_ema = None
      return
    if spec.surrogate_mode == "per_step":
      self.rho = nnx.Param(jnp.full((num_steps,), rho0, jnp.float32))
    elif spec.surrogate_mode == "per_layer":
      self.rho = nnx.Param(jnp.asarray(rho0, jnp.float32))
    else:
      self.rho = None
    if spec.charge == "plif":
      w0 = math.log(spec.decay_init / (1 - spec.decay_init))
      self.decay_logit = nnx.Param(jnp.asarray(w0, jnp.float32))
    else:
      self.decay_logit = None
    if spec.adaptive:
      self.theta_ema = nnx.BatchStat(jnp.full((num_steps,), spec.threshold, jnp.float32))
    else:
      self.theta_ema = None

  def alpha_T(self) -> jax.Array:
    """Surrogate sharpness per step, ``[T]``."""
    T = self.num_steps
    if self.rho is None:
      return jnp.full((T,), self.spec.alpha, jnp.float32)
    return jnp.broadcast_to(neurons.alpha_from_rho(self.rho[...]), (T,))

  def unroll(self) -> int | bool:
    """The time loop's ``unroll``: ``scan_unroll``, or (None) ``neurons_fused.AUTO`` (the
    lowering platform picks: ``neurons_fused.default_unroll`` on the CPU, a scan elsewhere)."""
    if self.scan_unroll is None:
      return neurons_fused.AUTO
    return self.scan_unroll

  def decay(self) -> jax.Array:
    if self.decay_logit is not None:
      return jax.nn.sigmoid(self.decay_logit[...])
    return jnp.asarray(neuron_spec.lif_decay(self.spec), jnp.float32)

  def __call__(self, x_TB: jax.Array) -> tuple[jax.Array, NeuronStats]:
    if x_TB.shape[0] != self.num_steps:
      raise UserError(f"neuron expects T={self.num_steps} steps on axis 0, got shape "
                      f"{x_TB.shape}")
    if self.spec.activation == "relu":
      return self._relu(x_TB)
    training = not self.use_running_average
    theta_T = None  # eval: the EMA; training: the EMA replaces a non-finite batch statistic
    if self.theta_ema is not None:
      theta_T = self.theta_ema[...]
    forward = functools.partial(
        neuron_forward, spec=self.spec, training=training, unroll=self.unroll(),
        pn_kappa=self.pn_kappa, keep_potential=self.probe, bptt=self.bptt)
    if self.remat and not self.probe:  # backward recomputes the scan from x_TB
      forward = backends.checkpoint(forward)
    S_TB, aux, H_TB = forward(x_TB, self.alpha_T(), self.decay(), theta_T)
    if self.theta_ema is not None and training:
      m = self.spec.adaptive_momentum
      self.theta_ema[...] = (1 - m) * self.theta_ema[...] + m * aux.theta_T
    if self.probe:
      self.sow(nnx.Intermediate, "potential_TB", H_TB)
      self.sow(nnx.Intermediate, "spikes_TB", S_TB)
      self.sow(nnx.Intermediate, "theta_T", aux.theta_T)
      self.sow(nnx.Intermediate, "surrogate_alpha_T", self.alpha_T())
    return S_TB, aux

  def _relu(self, x_TB: jax.Array) -> tuple[jax.Array, NeuronStats]:
    """The ANN twin: ReLU in place of the neuron; the stats have the same structure, all zeros
    (no potentials, no spikes), so losses and metrics run unchanged."""
    y_TB = jax.nn.relu(x_TB)
    if self.probe:
      self.sow(nnx.Intermediate, "potential_TB", x_TB)
      self.sow(nnx.Intermediate, "spikes_TB", y_TB)
    zeros_T = jnp.zeros((x_TB.shape[0],), jnp.float32)
    return y_TB, NeuronStats(zeros_T, zeros_T, zeros_T, zeros_T, zeros_T)


class NeuronFactory:
  """Builds ``SpikingNeuron`` layers of one setting; models take one and call it per layer."""

  def __init__(self, spec: neurons.NeuronSpec, num_steps: int, pn_kappa: float = 1.0,
               scan_unroll: int | bool | None = None, remat: bool = False,
               bptt: str = "fused"):
    _set_settings(self, spec, num_steps, pn_kappa, scan_unroll, remat, bptt)

  def _kwargs(self) -> dict:
    return dict(pn_kappa=self.pn_kappa, scan_unroll=self.scan_unroll, remat=self.remat,
                bptt=self.bptt)

  def replace(self, **changes) -> "NeuronFactory":
    """A copy with some constructor arguments changed (``spec``, ``remat``, ...)."""
    return NeuronFactory(**(dict(spec=self.spec, num_steps=self.num_steps) | self._kwargs()
                            | changes))

  def __call__(self) -> SpikingNeuron:
    return SpikingNeuron(self.spec, self.num_steps, **self._kwargs())


def collect_aux(stats_list: list[NeuronStats]) -> NeuronStats:
  """Stacks per-layer statistics into one ``NeuronStats`` whose fields are ``[L, T]``."""
  return NeuronStats(*(jnp.stack(f) for f in zip(*stats_list)))


def layer_name(path: tuple) -> str:
  """A spiking layer's name: its module path joined with dots (``blocks.0.neuron1``)."""
  return ".".join(map(str, path))


def neuron_parameters(model: nnx.Module) -> dict[str, dict]:
  """Per spiking layer (module-path order): ``alpha_T`` (None for the dynamic surrogate, whose
  width follows the data), ``learnable_alpha``, ``theta_ema_T`` (None unless adaptive) and
  ``decay``, as host numbers."""
  out = {}
  for path, m in nnx.iter_modules(model):
    if not isinstance(m, SpikingNeuron):
      continue
    dynamic = m.spec.surrogate_mode == "dynamic"
    out[layer_name(tuple(path))] = {
        "alpha_T": None if dynamic else np.asarray(m.alpha_T(), np.float32),
        "learnable_alpha": m.spec.learnable_alpha,
        "theta_ema_T": None if m.theta_ema is None else np.asarray(m.theta_ema[...],
                                                                   np.float32),
        "decay": float(m.decay()),
    }
  return out


def neuron_scalars(model: nnx.Module) -> dict[str, float]:
  """``alpha/<layer>/<t>`` (learnable surrogates) and ``theta_ema/<layer>/<t>`` (adaptive
  thresholds) as floats, for a metrics log."""
  out = {}
  for name, p in neuron_parameters(model).items():
    if p["learnable_alpha"]:
      out.update({f"alpha/{name}/{t}": float(a) for t, a in enumerate(p["alpha_T"])})
    if p["theta_ema_T"] is not None:
      out.update({f"theta_ema/{name}/{t}": float(a) for t, a in enumerate(p["theta_ema_T"])})
  return out
