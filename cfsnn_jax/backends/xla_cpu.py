"""XLA:CPU settings for CPU runs, applied by the program before JAX initialises its backend.

Contract: ``apply()`` is called first thing by ``python -m cfsnn_jax.main`` and by the
benchmarks; it returns a dict saying what it did (the benchmarks report it). It

- appends ``CPU_XLA_FLAGS`` to ``XLA_FLAGS`` (a flag the user already set is left alone), and
- keeps freed host memory in the allocator (``mallopt``; ``TUNED_MALLOC`` is the equivalent
  ``GLIBC_TUNABLES`` string) so XLA's per-step buffers are reused instead of unmapped and
  page-faulted again every step,

only where the run will be on the CPU (``switches.cpu_tuning``): ``CFSNN_CPU_TUNING=0``
switches both off, ``=1`` forces them on; unset (auto) they are off when ``JAX_PLATFORMS`` names an accelerator first
or an accelerator plugin (CUDA / ROCm / TPU) is installed and ``JAX_PLATFORMS`` does not
say ``cpu``. Nothing here is measured on GPU/TPU, so nothing is applied there by default.
Called after the backend is up, it changes nothing and says so (``"late": True``).

Why each setting (numbers: docs/PERFORMANCE.md): jaxlib 0.10 hands every convolution to
YNNPACK by default; its weight-gradient convolution (window = the whole feature map) runs at
13-27 GFLOP/s and its cost grows 2.2-3x when the batch doubles, which made the ResNet-19
step super-linear in the batch. XLA's own (Eigen) convolutions are as fast or faster for the
forward and input-gradient convolutions too, so YNNPACK stays on for dots and reductions
only.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from cfsnn_jax.backends import switches

ENV_SWITCH = switches.CPU_TUNING

# XLA_FLAGS syntax ('-x' removes x from jaxlib's default list of YNNPACK fusion types).
CPU_XLA_FLAGS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
}

# The same settings as per-executable compiler options (DebugOptions fields; the repeated
# enum takes full names): jaxlib 0.10's default YNNPACK list is individual dots,
# individual convolutions and reductions; we keep the first and last.
_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}

TUNED_MALLOC = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                "glibc.malloc.trim_threshold=68719476736")

def compiler_options() -> dict[str, Any]:
  """``CPU_XLA_FLAGS`` as ``jax.jit(...).lower(...).compile(compiler_options=...)`` takes
  them (the benchmarks compare option sets in one process this way)."""
  return dict(_COMPILER_OPTIONS)


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # noqa: BLE001 - jax not importable or internals moved: assume not
    return False


def tune_malloc() -> bool:
  """``TUNED_MALLOC`` for this running process (``mallopt``: one arena, no mmap, no trim).
  False where libc has no ``mallopt`` (not glibc)."""
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
  return bool(libc.mallopt(m_arena_max, 1) and libc.mallopt(m_mmap_max, 0)
              and libc.mallopt(m_trim_threshold, 2**31 - 1))


def xla_flags_with(flags: dict[str, str], current: str) -> str:
  """``current`` (an XLA_FLAGS string) plus every flag of ``flags`` it does not set."""
  present = {tok.split("=", 1)[0].lstrip("-") for tok in current.split()}
  extra = [f"--{k}={v}" for k, v in flags.items() if k not in present]
  return " ".join([current.strip()] + extra).strip()


def apply(enabled: bool | None = None) -> dict[str, Any]:
  """Applies the CPU settings (see the module docstring); ``enabled`` overrides the
  environment switch. Returns what was decided and set."""
  enabled, why = switches.cpu_tuning(enabled)
  out: dict[str, Any] = {"enabled": bool(enabled), "reason": why, "late": False}
  if not enabled:
    return out
  if _backend_started():
    out["late"] = True  # XLA_FLAGS are read once, when the backend starts
    return out
  os.environ["XLA_FLAGS"] = xla_flags_with(CPU_XLA_FLAGS, os.environ.get("XLA_FLAGS", ""))
  out["xla_flags"] = os.environ["XLA_FLAGS"]
  out["malloc_tuned"] = tune_malloc()
  return out
