"""Building blocks shared by the spiking model families.

Contract: every model's ``__call__(x)`` takes a static batch ``[B, ...]`` (repeated over T
after the model's first stateless layer, which acts as the encoder) or, for event data, a
time-major batch ``[T, B, ...]``, and returns ``(logits_TBK, aux)`` with ``aux`` a
``layers.NeuronAux`` whose fields are ``[L, T]`` (one row per spiking layer).

Every model also takes ``remat`` (``REMATS``, ``config.model.remat``): ``remat_neuron`` gives
the model's neuron factory, ``remat_block(remat)(fn)`` checkpoints one block / unit.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cfsnn_jax.layers import NeuronFactory, checkpoint, fold, unfold

# Rematerialisation (``config.model.remat``; every model takes ``remat``). Value: (policy of
# the per-block checkpoint, or None for no block checkpoint; checkpoint each neuron). A
# "block" is a ResNet BasicBlock, a VGG / conv-net / MLP ``layer -> BN -> neuron`` unit, a
# Spikformer patch-splitting unit or Transformer block (stems and hidden FC units as well).
REMATS: dict[str, tuple[Any, bool]] = {
    "none": (None, False),  # keep every residual (fastest, most memory)
    "neuron": (None, True),  # each neuron keeps its input; backward recomputes scan + stats
    "block": ("dots", False),  # each block keeps conv / matmul outputs, recomputes the rest
    "block_full": ("nothing", False),  # each block keeps its input only (recomputes convs)
}
_POLICIES = {"nothing": jax.checkpoint_policies.nothing_saveable,
             "dots": jax.checkpoint_policies.dots_saveable}


def validate_remat(remat: str) -> None:
  if remat not in REMATS:
    raise ValueError(f"unknown remat {remat!r}; valid choices: {', '.join(REMATS)}")


def remat_neuron(remat: str, neuron: NeuronFactory) -> NeuronFactory:
  """The model's neuron factory for ``remat`` (checkpointing each neuron where asked)."""
  validate_remat(remat)
  return neuron.replace(remat=True) if REMATS[remat][1] else neuron


def remat_block(remat: str) -> Callable[[Callable], Callable]:
  """``wrap(fn)``: ``fn`` (a function of modules and arrays) checkpointed with the block
  policy of ``remat`` (``checkpoint_modules``), or ``fn`` itself."""
  policy = REMATS[remat][0]
  if policy is None:
    return lambda fn: fn
  return lambda fn: checkpoint_modules(fn, _POLICIES[policy])


def checkpoint_modules(fn: Callable, policy: Callable | None = None) -> Callable:
  """``fn(*modules_and_arrays)`` under ``layers.checkpoint``: the modules' state goes in as
  explicit arguments and their updates (BatchNorm statistics, DS-ATGO EMA) come back out and
  are written to the modules, as ``nnx.remat`` does."""
  def wrapped(*args):
    is_module = [isinstance(a, nnx.Module) for a in args]
    modules = tuple(a for a, m in zip(args, is_module) if m)
    arrays = tuple(a for a, m in zip(args, is_module) if not m)
    graphdef, state = nnx.split(modules)

    def pure(state, arrays):
      merged = nnx.merge(graphdef, state)
      next_module, next_array = iter(merged).__next__, iter(arrays).__next__
      out = fn(*(next_module() if m else next_array() for m in is_module))
      return out, nnx.state(merged, nnx.Not(nnx.Param))  # parameters do not change

    out, new_state = checkpoint(pure, policy)(state, arrays)
    nnx.update(modules, new_state)
    return out
  return wrapped


def call_module(module: nnx.Module, *args):
  """``module(*args)``: a function of the module, for ``remat_block``."""
  return module(*args)


def bn_neuron(bn: nnx.Module, sn: nnx.Module, x_TB: jax.Array):
  """``neuron(BN(x))`` on ``[T, B, ...]``: one unit for ``remat_block``."""
  return sn(bn(x_TB))


def layer_bn_neuron(layer: nnx.Module, bn: nnx.Module, sn: nnx.Module, x_TB: jax.Array):
  """``neuron(BN(layer(x)))`` with the stateless ``layer`` (conv / linear) on ``[T*B, ...]``."""
  return sn(bn(unfold(layer(fold(x_TB)), x_TB.shape[0])))


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
