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
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cfsnn_jax import neurons


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


class SpikingNeuron(nnx.Module):
  """The neuron of one layer; parameters live here, dynamics in ``neurons.run_neuron``."""

  def __init__(self, spec: neurons.NeuronSpec, num_steps: int, *, pn_kappa: float = 1.0,
               scan_unroll: int | bool = 1):
    neurons.validate_spec(spec)
    neurons.validate_num_steps(num_steps)
    self.spec = spec
    self.num_steps = num_steps
    self.pn_kappa = pn_kappa
    self.scan_unroll = scan_unroll
    self.use_running_average = False
    self.probe = False
    rho0 = neurons.rho_for_alpha(spec.alpha)
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

  def decay(self) -> jax.Array:
    if self.decay_logit is not None:
      return jax.nn.sigmoid(self.decay_logit[...])
    return jnp.asarray(neurons.lif_decay(self.spec), jnp.float32)

  def __call__(self, x_TB: jax.Array) -> tuple[jax.Array, NeuronAux]:
    if x_TB.shape[0] != self.num_steps:
      raise ValueError(f"neuron expects T={self.num_steps} steps on axis 0, got shape "
                       f"{x_TB.shape}")
    training = not self.use_running_average
    theta_T = None
    if self.theta_ema is not None and not training:
      theta_T = self.theta_ema[...]
    S_TB, H_TB, theta_used_T = neurons.run_neuron(
        x_TB, self.spec, alpha_T=self.alpha_T(), decay=self.decay(), theta_T=theta_T,
        training=training, unroll=self.scan_unroll)
    if self.theta_ema is not None and training:
      m = self.spec.adaptive_momentum
      self.theta_ema[...] = (1 - m) * self.theta_ema[...] + m * theta_used_T
    if self.probe:
      self.sow(nnx.Intermediate, "potential_TB", H_TB)
      self.sow(nnx.Intermediate, "spikes_TB", S_TB)
      self.sow(nnx.Intermediate, "theta_T", theta_used_T)
      self.sow(nnx.Intermediate, "surrogate_alpha_T", self.alpha_T())
    axes = tuple(range(1, H_TB.ndim))
    h32 = H_TB.astype(jnp.float32)
    aux = NeuronAux(
        h_pos_T=jnp.mean(jax.nn.relu(h32), axis=axes),
        h_neg_T=jnp.mean(jax.nn.relu(-h32), axis=axes),
        h_tanh_T=jnp.mean(jnp.tanh(self.pn_kappa * h32), axis=axes),
        rate_T=jax.lax.stop_gradient(jnp.mean(jnp.abs(S_TB.astype(jnp.float32)), axis=axes)),
        theta_T=jax.lax.stop_gradient(theta_used_T),
    )
    return S_TB, aux


class NeuronFactory:
  """Builds ``SpikingNeuron`` layers of one setting; models take one and call it per layer."""

  def __init__(self, spec: neurons.NeuronSpec, num_steps: int, pn_kappa: float = 1.0,
               scan_unroll: int | bool = 1):
    neurons.validate_spec(spec)
    neurons.validate_num_steps(num_steps)
    self.spec = spec
    self.num_steps = num_steps
    self.pn_kappa = pn_kappa
    self.scan_unroll = scan_unroll

  def __call__(self) -> SpikingNeuron:
    return SpikingNeuron(self.spec, self.num_steps, pn_kappa=self.pn_kappa,
                         scan_unroll=self.scan_unroll)


def collect_aux(aux_list: list[NeuronAux]) -> NeuronAux:
  """Stacks per-layer aux into one ``NeuronAux`` whose fields are ``[L, T]``."""
  return NeuronAux(*(jnp.stack(f) for f in zip(*aux_list)))
