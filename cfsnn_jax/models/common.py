"""Building blocks shared by the spiking model families.

Contract: every model's ``__call__(x)`` takes a static batch ``[B, ...]`` (repeated over T
after the model's first stateless layer, which acts as the encoder) or, for event data, a
time-major batch ``[T, B, ...]``, and returns ``(logits_TBK, aux)`` with ``aux`` a
``layers.NeuronAux`` whose fields are ``[L, T]`` (one row per spiking layer).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cfsnn_jax.layers import fold, unfold


def to_time_major(x: jax.Array, num_steps: int, static_input: bool) -> jax.Array:
  """Static ``[B, ...]`` -> ``[T, B, ...]`` by repetition; event input is returned as is."""
  if static_input:
    return jnp.broadcast_to(x[None], (num_steps,) + x.shape)
  if x.shape[0] != num_steps:
    raise ValueError(f"event input must be time-major [T={num_steps}, B, ...], got {x.shape}")
  return x


def check_model_input(name: str, x: jax.Array, input_shape: Sequence[int], num_steps: int,
                      static_input: bool) -> None:
  """Trace-time shape check (Python, before compilation): one line naming what was expected."""
  lead = "[B, " if static_input else f"[T={num_steps}, B, "
  n = 1 if static_input else 2
  if x.ndim != n + len(input_shape) or tuple(x.shape[n:]) != tuple(input_shape) or (
      not static_input and x.shape[0] != num_steps):
    raise ValueError(f"{name} was built for input {lead}{', '.join(map(str, input_shape))}], "
                     f"got shape {tuple(x.shape)}")


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
