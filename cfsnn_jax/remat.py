"""Rematerialisation (``config.model.remat``) and the XLA:CPU scheduling workarounds it needs.

Contract:
- ``REMATS``: the remat modes every model takes (names in ``choices.REMAT_NAMES``):
  ``none`` keeps every residual; ``neuron`` checkpoints each neuron (its backward recomputes
  the time loop from the input); ``block`` / ``block_full`` checkpoint each block / unit
  keeping matmul outputs / nothing. ``remat_neuron(remat, factory)`` gives the model's neuron
  factory, ``remat_block(remat)(fn)`` checkpoints one block (``checkpoint_modules``).
- ``checkpoint(fn, policy)``: ``jax.checkpoint``; on XLA:CPU its recomputation is also tied to
  the incoming cotangent (``after_cotangent``), because that backend's scheduler otherwise
  runs every block's recomputation right after the forward pass, which keeps all recomputed
  activations alive at once and saves no memory (measured: docs/PERFORMANCE.md).
- ``backend_workarounds()``: whether the CPU-measured workarounds (``after_cotangent`` here and
  in ``neurons_fused``, the Python-unrolled time loop for T <= 16) apply: on the ``cpu``
  backend only; ``CFSNN_BACKEND_WORKAROUNDS=on|off`` forces them (benchmarks on other
  backends). Read at trace time.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cfsnn_jax.choices import REMAT_NAMES
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


def backend_workarounds() -> bool:
  """True on the ``cpu`` backend (where the workarounds were measured), or as forced by
  ``CFSNN_BACKEND_WORKAROUNDS=on|off``."""
  forced = os.environ.get("CFSNN_BACKEND_WORKAROUNDS", "").lower()
  if forced in ("on", "1", "true"):
    return True
  if forced in ("off", "0", "false"):
    return False
  return jax.default_backend() == "cpu"


def after_cotangent(tree: Any, g: Any) -> Any:
  """``tree`` with every floating leaf made to depend on the cotangent ``g`` (its first leaf).

  Backward-pass work that needs only forward values (the surrogate derivatives need only H;
  a rematerialised block needs only its saved inputs) may otherwise be scheduled by XLA:CPU
  during the forward pass, its results kept alive until the backward, which costs the memory
  that recomputation was meant to save; ``lax.optimization_barrier`` does not prevent it on
  that backend. The dependency is exact arithmetic: ``leaf + 0 * s`` with ``s`` a finite sum
  of a few cotangent elements (a reduction, so XLA computes it once instead of inside every
  consumer's loop). The identity where ``backend_workarounds()`` is False.
  """
  if not backend_workarounds():
    return tree
  flat = jnp.ravel(jax.tree.leaves(g)[0])
  s = jnp.sum(flat[:min(flat.size, 8)].astype(jnp.float32))
  zero = jnp.where(jnp.isfinite(s), s, 0.0) * 0.0

  def tie(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating) and x.size:
      return x + zero.astype(x.dtype)
    return x
  return jax.tree.map(tie, tree)


def checkpoint(fn: Callable, policy: Callable | None = None) -> Callable:
  """``jax.checkpoint(fn, policy=policy)``; with ``backend_workarounds()`` a ``custom_vjp``
  whose recomputation cannot start before the cotangent of its own outputs exists (the saved
  residuals are tied to it, ``after_cotangent``). Same values and gradients as ``fn``;
  reverse mode only in that case. ``fn`` takes and returns pytrees of arrays."""
  ckpt = jax.checkpoint(fn, policy=policy)
  if not backend_workarounds():
    return ckpt

  @jax.custom_vjp
  def wrapped(*args):
    return fn(*args)

  def fwd(*args):
    return jax.vjp(ckpt, *args)  # (outputs, pullback): the pullback holds the residuals

  def bwd(pullback, g):
    return after_cotangent(pullback, g)(g)

  wrapped.defvjp(fwd, bwd)
  return wrapped


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
  """``fn(*modules_and_arrays)`` under ``checkpoint``: the modules' state goes in as explicit
  arguments and their updates (BatchNorm statistics, DS-ATGO EMA) come back out and are
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

    out, new_state = checkpoint(pure, policy)(state, arrays)
    nnx.update(modules, new_state)
    return out
  return wrapped
