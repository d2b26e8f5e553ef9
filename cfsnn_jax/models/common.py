"""Building blocks shared by the spiking model families.

Contract: every model's ``__call__(x)`` takes a static batch ``[B, ...]`` (repeated over T
after the model's first stateless layer, which acts as the encoder) or, for event data, a
time-major batch ``[T, B, ...]``, checks it with ``check_model_input`` (one line naming the
expected shape), and returns ``(logits_TBK, aux)`` with ``aux`` a ``neurons.NeuronStats``
whose fields are ``[L, T]`` (one row per spiking layer, in forward order).

Conventions every family follows:
- stateless layers (conv, linear, pooling) run on ``[T*B, ...]`` through ``layers.per_step``;
- a spiking layer's attribute is named ``neuron`` / ``<role>_neuron`` (lists: ``neurons`` /
  ``<role>_neurons``); the module path is the layer's name in metric keys and reports;
- convolutions are ``conv(...)``: ``nnx.Conv`` without bias whose convolution is
  ``backends.conv_general_dilated`` (oneDNN gradients on CPU runs, XLA's elsewhere);
- every model takes ``remat`` (``remat.REMATS``, ``config.model.remat``): ``remat_neuron``
  gives the model's neuron factory, ``remat_block(remat)(fn)`` checkpoints one block / unit.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cfsnn_jax import backends
from cfsnn_jax.errors import UserError
from cfsnn_jax.neuron.layers import NeuronFactory, fold, per_step, unfold
from cfsnn_jax.neuron.remat import remat_neuron


def conv(in_ch: int, out_ch: int, kernel: tuple[int, int], *, rngs: nnx.Rngs,
         strides: int = 1) -> nnx.Conv:
  """A bias-free ``nnx.Conv`` (NHWC, SAME padding) on ``backends.conv_general_dilated``."""
  return nnx.Conv(in_ch, out_ch, kernel, strides=strides, use_bias=False, rngs=rngs,
                  conv_general_dilated=backends.conv_general_dilated)


def call_module(module: nnx.Module, *args):
  """``module(*args)``: a function of the module, for ``remat_block``."""
  return module(*args)


def bn_neuron(bn: nnx.Module, neuron: nnx.Module, x_TB: jax.Array):
  """``neuron(BN(x))`` on ``[T, B, ...]``: one unit for ``remat_block``."""
  return neuron(bn(x_TB))


def layer_bn_neuron(layer: nnx.Module, bn: nnx.Module, neuron: nnx.Module, x_TB: jax.Array):
  """``neuron(BN(layer(x)))`` with the stateless ``layer`` (conv / linear) on ``[T*B, ...]``."""
  return neuron(bn(per_step(layer, x_TB)))


def init_model(model: nnx.Module, *, neuron: NeuronFactory, remat: str, static_input: bool,
               input_shape: Sequence[int]) -> NeuronFactory:
  """Sets what every model holds (``num_steps``, ``remat``, ``static_input``, ``input_shape``)
  and returns the model's neuron factory for ``remat``."""
  neuron = remat_neuron(remat, neuron)
  model.num_steps = neuron.num_steps
  model.remat = remat
  model.static_input = static_input
  model.input_shape = tuple(input_shape)
  return neuron


def check_hwc(name: str, input_shape: Sequence[int], divisor: int,
              why: str) -> tuple[int, int, int]:
  """``(H, W, C)`` of an image model's ``input_shape``; one line unless it is HWC with H and W
  multiples of ``divisor`` (``why``: what needs the divisor, e.g. ``"3 pooling stages"``)."""
  if len(input_shape) != 3:
    raise UserError(f"{name} needs HWC input, got input shape {tuple(input_shape)}")
  h, w, c = input_shape
  if h % divisor or w % divisor:
    raise UserError(f"{name} with {why} needs H and W divisible by {divisor}, got {h}x{w}")
  return h, w, c


def to_time_major(x: jax.Array, num_steps: int, static_input: bool) -> jax.Array:
  """Static ``[B, ...]`` -> ``[T, B, ...]`` by repetition; event input is returned as is."""
  if static_input:
    return jnp.broadcast_to(x[None], (num_steps,) + x.shape)
  if x.shape[0] != num_steps:
    raise UserError(f"event input must be time-major [T={num_steps}, B, ...], got {x.shape}")
  return x


def check_model_input(name: str, x: jax.Array, input_shape: Sequence[int | None],
                      num_steps: int, static_input: bool) -> None:
  """Trace-time shape check (Python, before compilation): one line naming what was expected.
  ``None`` in ``input_shape`` accepts any size on that axis."""
  lead = "[B, " if static_input else f"[T={num_steps}, B, "
  n = 1 if static_input else 2
  fits = x.ndim == n + len(input_shape) and all(
      want is None or got == want for got, want in zip(x.shape[n:], input_shape))
  if not fits or (not static_input and x.shape[0] != num_steps):
    want = ", ".join("L" if d is None else str(d) for d in input_shape)
    raise UserError(f"{name} was built for input {lead}{want}], got shape {tuple(x.shape)}")


class TimeBatchNorm(nnx.Module):
  """BatchNorm over ``T*B`` jointly (tdBN-style, default) or per time step (TEBN-style).

  ``per_step=True`` keeps separate statistics and affine parameters for each step by
  normalising ``[B, ...]`` slices with a vmapped BatchNorm.
  """

  def __init__(self, num_features: int, num_steps: int, *, per_step: bool = False,
               momentum: float = 0.9, epsilon: float = 1e-5, rngs: nnx.Rngs):
    self.per_step = per_step
    self.num_steps = num_steps
    if per_step:
      @nnx.split_rngs(splits=num_steps)
      @nnx.vmap(in_axes=0, out_axes=0)
      def make(rngs):
        return nnx.BatchNorm(num_features, momentum=momentum, epsilon=epsilon, rngs=rngs)
      self.bn = make(rngs)
    else:
      self.bn = nnx.BatchNorm(num_features, momentum=momentum, epsilon=epsilon, rngs=rngs)

  def __call__(self, x_TB: jax.Array) -> jax.Array:
    if not self.per_step:  # float32 statistics; output in the input's (compute) dtype
      return unfold(self.bn(fold(x_TB)), x_TB.shape[0]).astype(x_TB.dtype)

    @nnx.vmap(in_axes=(0, 0), out_axes=0)
    def apply(bn, x_B):
      return bn(x_B)
    return apply(self.bn, x_TB).astype(x_TB.dtype)
