"""Everything specific to one platform, and the face through which the rest of the package uses it.

Modules: ``switches`` (the three environment switches and every decision they feed),
``xla_cpu`` (XLA:CPU flags and allocator, applied before JAX starts), ``onednn_conv`` (oneDNN
convolution gradients for CPU runs; kernel source in ``kernels/``), ``cpu_schedule`` (the
XLA:CPU scheduling workarounds).

The face (``models/``, ``neuron/`` and ``analysis/`` use only these names; each is neutral:
the platform's own code where it applies, the portable computation elsewhere):
- ``conv_general_dilated(...)``: ``lax.conv_general_dilated``'s signature and values.
- ``reference_convolutions()``: a context within which traces use XLA's own convolutions.
- ``checkpoint(fn, policy)``, ``after_cotangent(tree, g)``, ``with_backend_schedule(make, *args)``,
  ``time_loop_unroll(T)``, ``with_time_loop_unroll(make, T, *args)``: the schedule hooks (``cpu_schedule``);
  ``backend_workarounds()`` says whether they act in the CPU branch.
Every CPU path is chosen by the lowering platform, not by the host (``per_platform``: one
traced program holds the CPU branch and the portable one; lowered for ``cuda`` / ``rocm`` /
``tpu`` it is the portable computation whatever the switches say).
Importing the package loads no jax (``xla_cpu`` must run before JAX starts); the functions
import their module at first call.
"""

from __future__ import annotations

from typing import Any, Callable

from cfsnn_jax.backends.switches import backend_workarounds  # noqa: F401  (the face)


def conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs):
  """``lax.conv_general_dilated``; on CPU runs with oneDNN's gradients (``onednn_conv``)."""
  from cfsnn_jax.backends import onednn_conv
  return onednn_conv.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)


def reference_convolutions():
  """``with reference_convolutions():`` traces use ``lax.conv_general_dilated`` itself."""
  from cfsnn_jax.backends import onednn_conv
  return onednn_conv.xla_only()


def checkpoint(fn: Callable, policy: Callable | None = None) -> Callable:
  """``jax.checkpoint(fn, policy=policy)``, recomputation tied to the cotangent on XLA:CPU."""
  from cfsnn_jax.backends import cpu_schedule
  return cpu_schedule.checkpoint(fn, policy)


def after_cotangent(tree: Any, g: Any) -> Any:
  """``tree`` made to depend on the cotangent ``g`` (for the CPU branch of a backward rule:
  ``with_backend_schedule``)."""
  from cfsnn_jax.backends import cpu_schedule
  return cpu_schedule.after_cotangent(tree, g)


def with_backend_schedule(make: Callable[[bool], Callable], *args):
  """``make(backend_workarounds())(*args)`` where lowered for the CPU, ``make(False)(*args)``
  elsewhere."""
  from cfsnn_jax.backends import cpu_schedule
  return cpu_schedule.with_backend_schedule(make, *args)


def time_loop_unroll(num_steps: int) -> int | bool:
  """The neuron's time-loop ``unroll`` when none is configured, in the CPU branch."""
  from cfsnn_jax.backends import cpu_schedule
  return cpu_schedule.time_loop_unroll(num_steps)


def with_time_loop_unroll(make: Callable[[int | bool], Callable], num_steps: int, *args):
  """``make(unroll)(*args)``: ``unroll = time_loop_unroll(T)`` where lowered for the CPU,
  ``1`` (``lax.scan``) elsewhere (``per_platform.choose``)."""
  from cfsnn_jax.backends import per_platform
  return per_platform.choose(make(time_loop_unroll(num_steps)), make(1), *args)
