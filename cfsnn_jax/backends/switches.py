"""The three environment switches of the platform-specific code and the decisions they feed.

Contract (each decision is one small function; nothing else reads the switches):
- ``CPU_TUNING`` (``CFSNN_CPU_TUNING``): the XLA:CPU flags and allocator tuning
  (``xla_cpu.apply``). ``cpu_tuning(enabled)`` -> ``(bool, why)``: ``0`` off, ``1`` on,
  unset (auto) on where ``cpu_expected()`` says the run will be on the CPU.
- ``BACKEND_WORKAROUNDS`` (``CFSNN_BACKEND_WORKAROUNDS``): the CPU schedule
  (``cpu_schedule``). ``backend_workarounds()``: on the ``cpu`` backend, or as forced by
  ``on|off``. Read at trace time.
- ``ONEDNN_CONV`` (``CFSNN_ONEDNN_CONV``): the oneDNN convolution kernels (``onednn_conv``).
  ``onednn_refusal()`` -> why this trace does not use them, or None (use them if they build):
  ``0`` off; never where the default backend is not the CPU; ``1`` on; unset, on where the
  CPU backend has one device and ``CFSNN_CPU_TUNING`` is not ``0``.
On-values are ``1/true/on/yes``, off-values ``0/false/off/no`` (``CFSNN_BACKEND_WORKAROUNDS``:
``1/true/on`` and ``0/false/off``); anything else, unset included, is auto. Importable before
JAX starts (``xla_cpu`` runs first thing): jax is imported inside the decisions that ask it.
"""

from __future__ import annotations

import importlib.util
import os

CPU_TUNING = "CFSNN_CPU_TUNING"
BACKEND_WORKAROUNDS = "CFSNN_BACKEND_WORKAROUNDS"
ONEDNN_CONV = "CFSNN_ONEDNN_CONV"

_ON = ("1", "true", "on", "yes")
_OFF = ("0", "false", "off", "no")
_ACCELERATOR_PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13", "jax_cuda12_plugin",
                        "jax_cuda13_plugin", "jax_plugins.xla_rocm", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def value(name: str) -> str:
  """The switch's value as the decisions compare it (stripped, lower case; "" when unset)."""
  return os.environ.get(name, "").strip().lower()


def is_on(v: str) -> bool:
  return v in _ON


def is_off(v: str) -> bool:
  return v in _OFF


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def cpu_expected() -> tuple[bool, str]:
  """(whether this process will run on the CPU backend, why), decided before JAX starts."""
  platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return platforms[0] == "cpu", f"JAX_PLATFORMS={','.join(platforms)}"
  found = [m for m in _ACCELERATOR_PLUGINS if _installed(m)]
  if found:
    return False, f"accelerator plugin {found[0]} installed"
  return True, "no accelerator plugin installed"


def cpu_tuning(enabled: bool | None = None) -> tuple[bool, str]:
  """Whether ``xla_cpu.apply`` applies its settings, and why; ``enabled`` overrides the switch."""
  env = value(CPU_TUNING)
  if enabled is None and is_off(env):
    return False, f"{CPU_TUNING}={env}"
  if enabled is None and is_on(env):
    return True, f"{CPU_TUNING}={env}"
  if enabled is None:
    return cpu_expected()
  return enabled, "requested" if enabled else "switched off by the caller"


def backend_workarounds() -> bool:
  """True on the ``cpu`` backend (where the workarounds were measured), or as forced by
  ``CFSNN_BACKEND_WORKAROUNDS=on|off``."""
  forced = os.environ.get(BACKEND_WORKAROUNDS, "").lower()
  if forced in ("on", "1", "true"):
    return True
  if forced in ("off", "0", "false"):
    return False
  import jax
  return jax.default_backend() == "cpu"


def onednn_refusal() -> str | None:
  """Why this trace keeps XLA's convolutions (see the module docstring), or None."""
  import jax
  switch = value(ONEDNN_CONV)
  if is_off(switch):
    return f"{ONEDNN_CONV}={switch}"
  if jax.default_backend() != "cpu":  # forced or not: the FFI targets exist for the CPU only
    return f"backend {jax.default_backend()} (the kernels are CPU-only)"
  if not is_on(switch):
    if is_off(value(CPU_TUNING)):
      return f"{CPU_TUNING}=0"
    if jax.device_count() != 1:
      return f"{jax.device_count()} devices (auto: one CPU device)"
  return None
