"""The lowering platform picks the CPU path: one traced program, the CPU's code where it is
lowered for the CPU, the portable computation everywhere else.

Contract:
- ``choose(cpu, portable, *args)``: ``jax.lax.platform_dependent(*args, cpu=..., default=
  portable)``: both are traced; lowering for one platform keeps only that platform's branch
  (for ``cuda`` / ``rocm`` / ``tpu`` the portable one, so no CPU-only custom call or schedule
  reaches them), lowering for several keeps a conditional on the platform that XLA resolves
  before compiling. ``cpu`` is always a branch of its own (never merged with ``portable``),
  so the accelerator program has the same structure whatever the CPU switches decided for
  the CPU branch. Both must return the same pytree of shapes and dtypes. Where they hold
  ``custom_vjp`` s their residuals should have the same avals (``cond``'s partial
  evaluation shares residual slots by aval; the portable branch fills the CPU branch's other
  slots with zeros, which XLA removes with the dead branch).
- ``portable_only()``: a context within which ``choose`` traces ``portable`` alone (no
  conditional): for tracers of the jaxpr (the energy analysis counts synaptic operations on
  the portable program) and for ``onednn_conv.xla_only``.
- ``portable()``: whether this thread is inside ``portable_only()``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

_local = threading.local()  # .portable: set inside portable_only()


def portable() -> bool:
  return getattr(_local, "portable", False)


@contextlib.contextmanager
def portable_only():
  before = portable()
  _local.portable = True
  try:
    yield
  finally:
    _local.portable = before


def choose(cpu: Callable[..., Any], portable_fn: Callable[..., Any], *args: Any) -> Any:
  """``cpu(*args)`` where lowered for the CPU, ``portable_fn(*args)`` elsewhere."""
  if portable():
    return portable_fn(*args)
  import jax
  return jax.lax.platform_dependent(*args, cpu=lambda *a: cpu(*a), default=portable_fn)
