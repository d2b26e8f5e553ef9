"""The CPU schedule: workarounds for XLA:CPU's scheduler, identities where they do not apply.

Contract (whether they apply: ``switches.backend_workarounds()``, read at trace time, for
the program's CPU branch only: ``per_platform.choose`` gives every other lowering platform
the portable computation):
- ``after_cotangent(tree, g)``: ``tree`` made to depend on the cotangent ``g``, so backward
  work that needs only forward values is not scheduled during the forward pass;
  ``with_backend_schedule(make, *args)``: ``make(backend_workarounds())`` in the CPU branch,
  ``make(False)`` elsewhere.
- ``checkpoint(fn, policy)``: ``jax.checkpoint``; on XLA:CPU its recomputation is also tied to
  the incoming cotangent (``after_cotangent``), because that backend's scheduler otherwise
  runs every block's recomputation right after the forward pass, which keeps all recomputed
  activations alive at once and saves no memory (measured: docs/PERFORMANCE.md).
- ``time_loop_unroll(T)``: the neuron's time loop ``unroll`` when none is configured: a
  Python loop (``True``) for T <= ``AUTO_UNROLL_MAX_T`` where the workarounds apply (a while
  loop's stacked outputs start as constant buffers, which XLA:CPU allocates at program
  start), else 1 (``lax.scan``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from cfsnn_jax.backends import per_platform
from cfsnn_jax.backends.switches import backend_workarounds

AUTO_UNROLL_MAX_T = 16  # time_loop_unroll: a Python time loop up to this T (XLA:CPU), else scan


def time_loop_unroll(num_steps: int) -> int | bool:
  """``True`` (a Python time loop) for T <= 16 where the CPU workarounds apply, else 1: the
  CPU branch's unroll (``per_platform.choose`` gives other platforms ``lax.scan``, 1)."""
  return True if backend_workarounds() and num_steps <= AUTO_UNROLL_MAX_T else 1


def _tie(tree: Any, g: Any) -> Any:
  flat = jnp.ravel(jax.tree.leaves(g)[0])
  s = jnp.sum(flat[:min(flat.size, 8)].astype(jnp.float32))
  zero = jnp.where(jnp.isfinite(s), s, 0.0) * 0.0

  def tie(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating) and x.size:
      return x + zero.astype(x.dtype)
    return x
  return jax.tree.map(tie, tree)


def _untied(tree: Any, g: Any) -> Any:
  del g
  return tree


def after_cotangent(tree: Any, g: Any) -> Any:
  """``tree`` with every floating leaf made to depend on the cotangent ``g`` (its first leaf).
  Called by the CPU branch of a program only (``with_backend_schedule``; ``checkpoint``'s CPU
  wrapper), in backward rules (never differentiated itself).

  Backward-pass work that needs only forward values (the surrogate derivatives need only H;
  a rematerialised block needs only its saved inputs) may otherwise be scheduled by XLA:CPU
  during the forward pass, its results kept alive until the backward, which costs the memory
  that recomputation was meant to save; ``lax.optimization_barrier`` does not prevent it on
  that backend. The dependency is exact arithmetic: ``leaf + 0 * s`` with ``s`` a finite sum
  of a few cotangent elements (a reduction, so XLA computes it once instead of inside every
  consumer's loop).
  """
  return _tie(tree, g)


def with_backend_schedule(make: Callable[[bool], Callable], *args: Any) -> Any:
  """``make(workarounds)(*args)``: ``workarounds = backend_workarounds()`` where lowered for
  the CPU, ``False`` elsewhere (``per_platform.choose``). ``make(False)`` is the portable
  computation; ``make`` must return non-trivial functions of ``args`` (a branch that only
  passes its inputs on would let jax drop the conditional in one setting and not the other)."""
  return per_platform.choose(make(backend_workarounds()), make(False), *args)


def checkpoint(fn: Callable, policy: Callable | None = None) -> Callable:
  """``jax.checkpoint(fn, policy=policy)`` when lowered for an accelerator; in the CPU branch
  (``per_platform.choose``) a ``custom_vjp`` around it whose recomputation, where
  ``backend_workarounds()``, cannot start before the cotangent of its own outputs exists
  (the saved residuals are tied to it, ``after_cotangent``). Same values and gradients as
  ``fn``; reverse mode only on the CPU. ``fn`` takes and returns pytrees of arrays."""
  ckpt = jax.checkpoint(fn, policy=policy)
  tie = _tie if backend_workarounds() else _untied

  @jax.custom_vjp
  def wrapped(*args):
    return fn(*args)

  def fwd(*args):
    return jax.vjp(ckpt, *args)  # (outputs, pullback): the pullback holds the residuals

  def bwd(pullback, g):
    return tie(pullback, g)(g)

  wrapped.defvjp(fwd, bwd)
  return lambda *args: per_platform.choose(wrapped, ckpt, *args)
