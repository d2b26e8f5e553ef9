"""Rematerialisation (``config.model.remat``): the modes every model takes and their wrappers.

Contract:
- ``REMATS``: the remat modes every model takes (names in ``choices.REMAT_NAMES``):
  ``none`` keeps every residual; ``neuron`` checkpoints each neuron (its backward recomputes
  the time loop from the input); ``block`` / ``block_full`` checkpoint each block / unit
  keeping matmul outputs / nothing. ``remat_neuron(remat, factory)`` gives the model's neuron
  factory, ``remat_block(remat)(fn)`` checkpoints one block (``checkpoint_modules``).
- Checkpointing goes through ``backends.checkpoint`` (``jax.checkpoint``, plus the CPU
  schedule's tie of the recomputation to the incoming cotangent where that backend needs it).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from cfsnn_jax import backends
from cfsnn_jax.config.choices import REMAT_NAMES
from cfsnn_jax.errors import unknown_choice

# Value: (policy of the per-block checkpoint, or None for no block checkpoint; checkpoint
# each neuron). A "block" is a ResNet BasicBlock, a VGG / conv-net / MLP ``layer -> BN ->
# neuron`` unit, a Spikformer patch-splitting unit or Transformer block (stems and hidden FC
# units as well).
REMATS: dict[str, tuple[Any, bool]] = {
    "none": (None, False),  # keep every residual (fastest, most memory)
    "neuron": (None, True),  # each neuron keeps its input; backward recomputes scan + stats
    "block": ("dots", False),  # each block keeps conv / matmul outputs, recomputes the rest
    "block_full": ("nothing", False),  # each block keeps its input only (recomputes convs)
}
assert tuple(REMATS) == REMAT_NAMES
_POLICIES = {"nothing": jax.checkpoint_policies.nothing_saveable,
             "dots": jax.checkpoint_policies.dots_saveable}


def validate_remat(remat: str) -> None:
  if remat not in REMATS:
    raise unknown_choice("remat", remat, REMATS)


def remat_neuron(remat: str, neuron: Any) -> Any:
  """The model's neuron factory (``layers.NeuronFactory``) for ``remat``."""
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
  """``fn(*modules_and_arrays)`` under ``backends.checkpoint``: the modules' state goes in as
  explicit arguments and their updates (BatchNorm statistics, DS-ATGO EMA) come back out and are
  written to the modules, as ``nnx.remat`` does."""
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

    out, new_state = backends.checkpoint(pure, policy)(state, arrays)
    nnx.update(modules, new_state)
    return out
  return wrapped
