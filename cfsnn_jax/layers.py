"""Flax NNX spiking layers that own the neuron's parameters (METHOD.md §1–§4).

Contract:
- ``SpikingNeuron(spec, num_steps)`` owns the learnable surrogate logits ``rho`` (``[T]`` for
  ``per_step``, scalar for ``per_layer``, none for ``fixed`` / ``dynamic``), the PLIF decay
  logit ``w`` and, for the DS-ATGO adaptive threshold, the EMA ``theta_ema`` ``[T]`` (a
  ``nnx.BatchStat``: model state, saved in checkpoints, used in eval mode).
- ``__call__(x_TB) -> (S_TB, NeuronAux)``: spikes plus per-step statistics the losses and
  analyses need (PN moments, firing rate, thresholds). Nothing is kept between calls except
  the EMA update, which is an explicit state update like BatchNorm's.
- ``model.train()`` / ``model.eval()`` toggle ``use_running_average`` as for BatchNorm.
- Analysis only: with ``model.set_attributes(probe=True)`` every neuron ``sow``s its
  ``potential_TB``, ``spikes_TB``, ``theta_T`` and ``surrogate_alpha_T`` as
  ``nnx.Intermediate``; run the model under ``nnx.capture(model, nnx.Intermediate)`` to get
  them back. Training never sets ``probe``, so the train step carries no extra state.
- ``fold`` / ``unfold`` move between ``[T, B, ...]`` and ``[T*B, ...]`` for stateless layers.
- ``spec.activation == "relu"``: the ANN twin (performance reference): ReLU in place of the
  neuron, no parameters, an all-zero ``NeuronAux`` of the same shape.
- ``remat=True`` checkpoints the neuron (its backward recomputes the time loop from the
  input); ``scan_unroll=None`` (default) runs the time loop as a Python loop for T <= 16.
- ``checkpoint(fn, policy)``: ``jax.checkpoint`` whose recomputation XLA:CPU cannot hoist
  into the forward pass (used for neurons and, by the models, for blocks).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cfsnn_jax import neurons


AUTO_UNROLL_MAX_T = 16  # scan_unroll=None: a Python time loop up to this T, else lax.scan


class NeuronAux(NamedTuple):
  """Per-step statistics of one spiking layer, each of shape ``[T]`` (float32)."""
  h_pos_T: jax.Array  # mean(relu(H_t))           (PN loss, mean variant)
  h_neg_T: jax.Array  # mean(relu(-H_t))          (PN loss, mean variant)
  h_tanh_T: jax.Array  # mean(tanh(kappa H_t))     (PN loss, sign variant)
  rate_T: jax.Array  # mean(|S_t|): spikes per element (multi-level counts, signed |S|)
  theta_T: jax.Array  # threshold used at each step


def fold(x_TB: jax.Array) -> jax.Array:
  """[T, B, ...] -> [T*B, ...]."""
  return x_TB.reshape((-1,) + x_TB.shape[2:])


def unfold(x_N: jax.Array, num_steps: int) -> jax.Array:
  """[T*B, ...] -> [T, B, ...]."""
  return x_N.reshape((num_steps, -1) + x_N.shape[1:])


def checkpoint(fn: Callable, policy: Callable | None = None) -> Callable:
  """``jax.checkpoint(fn, policy=policy)`` whose recomputation runs in the backward pass.

  XLA's CPU scheduler does not know that a rematerialised forward should wait for the
  backward pass: it ran every block's recomputation right after the forward pass, which kept
  all the recomputed activations alive at once and saved no memory (measured:
  docs/PERFORMANCE.md). Here the saved residuals are tied to the incoming cotangent
  (``neurons.after_cotangent``) before the recomputation, so it cannot start before the
  cotangent of its own outputs exists. Same values and gradients as ``fn``; reverse mode
  only (a ``custom_vjp``). ``fn`` takes and returns pytrees of arrays.
  """
  ckpt = jax.checkpoint(fn, policy=policy)

  @jax.custom_vjp
  def wrapped(*args):
    return fn(*args)

  def fwd(*args):
    return jax.vjp(ckpt, *args)  # (outputs, pullback): the pullback holds the residuals

  def bwd(pullback, g):
    return neurons.after_cotangent(pullback, g)(g)

  wrapped.defvjp(fwd, bwd)
  return wrapped


def neuron_forward(x_TB: jax.Array, alpha_T: jax.Array, decay: jax.Array,
                   theta_T: jax.Array | None, *, spec: neurons.NeuronSpec, training: bool,
                   unroll: int | bool, pn_kappa: float, keep_potential: bool = False
                   ) -> tuple[jax.Array, NeuronAux, jax.Array | None]:
  """Pure forward of one spiking layer: ``(S_TB, aux, H_TB or None)``.

  The statistics come out of the neuron's own pass (``neurons.run_neuron_with_stats``), so
  neither H nor its gradient is materialised for them. A function of explicit arguments, so
  that ``checkpoint`` can wrap it (``SpikingNeuron(remat=True)``).
  """
  S_TB, H_TB, theta_used_T, stats = neurons.run_neuron_with_stats(
      x_TB, spec, alpha_T=alpha_T, decay=decay, theta_T=theta_T, training=training,
      unroll=unroll, pn_kappa=pn_kappa, keep_potential=keep_potential)
  aux = NeuronAux(h_pos_T=stats.h_pos_T, h_neg_T=stats.h_neg_T, h_tanh_T=stats.h_tanh_T,
                  rate_T=jax.lax.stop_gradient(stats.rate_T),
                  theta_T=jax.lax.stop_gradient(theta_used_T))
  return S_TB, aux, H_TB


class SpikingNeuron(nnx.Module):
  """The neuron of one layer; parameters live here, dynamics in ``neurons.run_neuron``."""

  def __init__(self, spec: neurons.NeuronSpec, num_steps: int, *, pn_kappa: float = 1.0,
               scan_unroll: int | bool | None = None, remat: bool = False):
    neurons.validate_spec(spec)
    neurons.validate_num_steps(num_steps)
    self.spec = spec
    self.num_steps = num_steps
    self.pn_kappa = pn_kappa
    self.scan_unroll = scan_unroll
    self.remat = remat
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
    """The time loop's ``unroll``: ``scan_unroll``, or (None) a Python loop for T <= 16."""
    if self.scan_unroll is None:
      return True if self.num_steps <= AUTO_UNROLL_MAX_T else 1
    return self.scan_unroll

  def decay(self) -> jax.Array:
    if self.decay_logit is not None:
      return jax.nn.sigmoid(self.decay_logit[...])
    return jnp.asarray(neurons.lif_decay(self.spec), jnp.float32)

  def __call__(self, x_TB: jax.Array) -> tuple[jax.Array, NeuronAux]:
    if x_TB.shape[0] != self.num_steps:
      raise ValueError(f"neuron expects T={self.num_steps} steps on axis 0, got shape "
                       f"{x_TB.shape}")
    if self.spec.activation == "relu":
      return self._relu(x_TB)
    training = not self.use_running_average
    theta_T = None
    if self.theta_ema is not None and not training:
      theta_T = self.theta_ema[...]
    forward = functools.partial(
        neuron_forward, spec=self.spec, training=training, unroll=self.unroll(),
        pn_kappa=self.pn_kappa, keep_potential=self.probe)
    if self.remat and not self.probe:  # backward recomputes the scan from x_TB
      forward = checkpoint(forward)
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

  def _relu(self, x_TB: jax.Array) -> tuple[jax.Array, NeuronAux]:
    """The ANN twin: ReLU in place of the neuron; the aux has the same structure, all zeros
    (no potentials, no spikes), so losses and metrics run unchanged."""
    y_TB = jax.nn.relu(x_TB)
    if self.probe:
      self.sow(nnx.Intermediate, "potential_TB", x_TB)
      self.sow(nnx.Intermediate, "spikes_TB", y_TB)
    zeros_T = jnp.zeros((x_TB.shape[0],), jnp.float32)
    return y_TB, NeuronAux(zeros_T, zeros_T, zeros_T, zeros_T, zeros_T)


class NeuronFactory:
  """Builds ``SpikingNeuron`` layers of one setting; models take one and call it per layer."""

  def __init__(self, spec: neurons.NeuronSpec, num_steps: int, pn_kappa: float = 1.0,
               scan_unroll: int | bool | None = None, remat: bool = False):
    neurons.validate_spec(spec)
    neurons.validate_num_steps(num_steps)
    self.spec = spec
    self.num_steps = num_steps
    self.pn_kappa = pn_kappa
    self.scan_unroll = scan_unroll
    self.remat = remat

  def replace(self, **changes) -> "NeuronFactory":
    """A copy with some constructor arguments changed (``spec``, ``remat``, ...)."""
    kw = dict(spec=self.spec, num_steps=self.num_steps, pn_kappa=self.pn_kappa,
              scan_unroll=self.scan_unroll, remat=self.remat)
    kw.update(changes)
    return NeuronFactory(**kw)

  def __call__(self) -> SpikingNeuron:
    return SpikingNeuron(self.spec, self.num_steps, pn_kappa=self.pn_kappa,
                         scan_unroll=self.scan_unroll, remat=self.remat)


def collect_aux(aux_list: list[NeuronAux]) -> NeuronAux:
  """Stacks per-layer aux into one ``NeuronAux`` whose fields are ``[L, T]``."""
  return NeuronAux(*(jnp.stack(f) for f in zip(*aux_list)))
