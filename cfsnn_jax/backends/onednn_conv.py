"""oneDNN convolution gradients for CPU runs: a drop-in ``conv_general_dilated`` for ``nnx.Conv``.

Contract:
- ``conv_general_dilated(lhs, rhs, window_strides, padding, ...)``: ``lax.conv_general_dilated``'s
  signature and values. Where ``enabled()`` and the convolution is a plain 2-D one (NHWC
  input, HWIO kernel, no dilation, one group, float32 or bfloat16, default precision, padding
  >= 0), it is a ``custom_vjp`` whose input and weight gradients run oneDNN's convolution
  primitives (``kernels/onednn_conv.cc``, XLA FFI custom calls). The float32 forward stays
  XLA's own convolution; the bfloat16 forward is oneDNN's too (XLA:CPU upcasts bf16
  convolutions). Everything else is ``lax.conv_general_dilated`` unchanged. The decision is
  taken at trace time, so one compiled step uses one path throughout.
- ``enabled() -> bool`` and ``status() -> dict``: whether the kernels are used and why (the
  benchmarks report it). ``with xla_only():`` traces with XLA's convolutions (the energy
  analysis counts synaptic ops on that reference path).
- Switch (decided in ``switches.onednn_refusal``): ``CFSNN_ONEDNN_CONV=0`` off, ``=1`` on (if
  the kernels build); never where the default backend is not the CPU (GPU / TPU: no kernels
  there, not measured). Unset, they are on where the CPU backend has one device and
  ``CFSNN_CPU_TUNING`` is not ``0``. A multi-device CPU mesh (the tests) would replicate the
  custom calls, so auto mode leaves it to XLA.
- The kernels are compiled at first use (about 4 s, once per machine) with the C++ compiler
  (``$CXX``, else ``c++``) against jaxlib's FFI headers and the ``onednn-devel-cpu-gomp``
  headers, into ``$CFSNN_CACHE_DIR`` (default ``~/.cache/cfsnn_jax``), named by a hash of
  source, jaxlib version and library. A build is compiled under a temporary name, fsynced,
  loaded once in a child process, stamped (``<name>.so.json``: size and SHA-256, written
  atomically) and renamed into place; a cached library is loaded only if it matches its
  stamp, and is rebuilt if not (truncated by a full disk or a killed build, or replaced). Any
  failure (no compiler, no oneDNN, a damaged entry that does not rebuild) leaves XLA's
  convolutions in place, logs one warning, and ``status()`` says why.

Why (docs/PERFORMANCE.md): XLA:CPU's weight-gradient convolution transposes both operands
and its input gradient runs Eigen's contraction. oneDNN's primitives on this CPU (AVX-512)
take 20-40 % less time for the two gradients of ResNet-19's convolutions, and the training
step 13 % less. In bf16 they run on AVX512-BF16 / AMX: the step is 2.3x faster than fp32.
oneDNN is the library PyTorch uses for the same convolutions.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cfsnn_jax.backends import per_platform, switches

ENV_SWITCH = switches.ONEDNN_CONV
SOURCE = Path(__file__).parent / "kernels" / "onednn_conv.cc"
_TARGETS = {"fwd": "CfsnnConvFwd", "bwd_data": "CfsnnConvBwdData",
            "bwd_weights": "CfsnnConvBwdWeights"}
_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs / rhs / out specs of NHWC, HWIO, NHWC
_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # "ok": bool, "reason": str, "library": path
_local = threading.local()  # .xla_only: set inside ``xla_only()``


def _dnnl_prefix() -> Path | None:
  """The install prefix holding oneDNN's headers and ``libdnnl.so.3`` (``DNNLROOT`` first)."""
  candidates = [os.environ.get("DNNLROOT"), sys.prefix, sys.base_prefix, site.getuserbase()]
  for root in filter(None, candidates):
    p = Path(root)
    if (p / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and \
       (p / "lib" / "libdnnl.so.3").exists():
      return p
  return None


def _cache_dir() -> Path:
  root = os.environ.get("CFSNN_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cfsnn_jax")
  return Path(root)


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _build_possible() -> bool:
  """Linux with oneDNN's headers and library and a C++ compiler (what ``_build`` needs)."""
  return sys.platform.startswith("linux") and _dnnl_prefix() is not None and \
      _compiler() is not None


def _build() -> Path:
  """The compiled kernels (built now unless a matching build is cached). Raises RuntimeError
  with a one-line reason."""
  if not sys.platform.startswith("linux"):
    raise RuntimeError(f"oneDNN kernels are built on Linux only (this is {sys.platform})")
  prefix = _dnnl_prefix()
  if prefix is None:
    raise RuntimeError("oneDNN not found (pip install onednn-cpu-gomp onednn-devel-cpu-gomp)")
  cxx = _compiler()
  if not cxx:
    raise RuntimeError("no C++ compiler (set CXX or install g++)")
  import jaxlib
  lib = (prefix / "lib" / "libdnnl.so.3").resolve()
  key = hashlib.sha256(b"\0".join([
      SOURCE.read_bytes(), jaxlib.__version__.encode(), str(lib).encode(),
      str(lib.stat().st_size).encode(), cxx.encode()])).hexdigest()[:16]
  out = _cache_dir() / f"onednn_conv-{key}.so"
  damage = _check_entry(out) if out.exists() else "absent"
  if damage is None:
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-I", jax.ffi.include_dir(),
         "-I", str(prefix / "include"), str(SOURCE), "-L", str(prefix / "lib"),
         "-l:libdnnl.so.3", f"-Wl,-rpath,{prefix / 'lib'}", "-o", tmp]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      raise RuntimeError(f"compiling {SOURCE.name} failed: {last}")
    _fsync(tmp)
    if not _loads_in_child(tmp):
      raise RuntimeError(f"the freshly built {SOURCE.name} library does not load")
    _write_stamp(out, _digest(tmp))
    os.replace(tmp, out)  # atomic: concurrent builders leave one complete file
    _fsync(out.parent)
  except (RuntimeError, OSError) as e:
    if damage != "absent":
      raise RuntimeError(f"the cached {out.name} is damaged ({damage}) and rebuilding it "
                         f"failed: {e}") from None
    raise
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


def _stamp(library: Path) -> Path:
  return library.with_name(library.name + ".json")


def _digest(path: str | Path) -> dict[str, Any]:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


def _fsync(path: str | Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _write_stamp(library: Path, digest: dict[str, Any]) -> None:
  """``<library>.json`` (size and SHA-256 of a library that loaded), written atomically."""
  stamp = _stamp(library)
  tmp = f"{stamp}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(json.dumps(digest))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, stamp)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _loads_in_child(path: str | Path) -> bool:
  """Whether ``dlopen`` of ``path`` succeeds in a child process (a truncated library can kill
  the process that maps it with SIGBUS; the child dies instead)."""
  code = "import ctypes, sys; ctypes.CDLL(sys.argv[1])"
  try:
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          timeout=120, check=False).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


def _check_entry(library: Path) -> str | None:
  """None if the cached ``library`` is the one its stamp describes, else what is wrong. An
  entry without a stamp (an older cache) is trusted if it loads in a child (then stamped)."""
  try:
    digest = _digest(library)
  except OSError as e:
    return f"unreadable: {e.strerror or e}"
  try:
    stamp = json.loads(_stamp(library).read_text())
  except FileNotFoundError:
    if not _loads_in_child(library):
      return "it does not load"
    with contextlib.suppress(OSError):
      _write_stamp(library, digest)
    return None
  except (OSError, ValueError) as e:
    return f"its stamp {_stamp(library).name} does not read: {e}"
  if not isinstance(stamp, dict) or stamp.get("size") != digest["size"]:
    return (f"{digest['size']} bytes, "
            f"{stamp.get('size') if isinstance(stamp, dict) else '?'} when built")
  if stamp.get("sha256") != digest["sha256"]:
    return "its SHA-256 differs from the one recorded when it was built"
  return None


def _load() -> dict[str, Any]:
  """Builds, loads and registers the FFI targets once per process."""
  with _lock:
    if not _loaded:
      try:
        path = _build()
        library = ctypes.CDLL(str(path))
        for target in _TARGETS.values():
          jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)),
                                      platform="cpu")
        _loaded.update(ok=True, reason="built and loaded", library=str(path))
      except (RuntimeError, OSError, AttributeError) as e:
        _loaded.update(ok=False, reason=str(e), library=None)
        logging.getLogger(__name__).warning(
            "oneDNN convolution kernels unavailable, using XLA's: %s", e)
    return _loaded


@contextlib.contextmanager
def xla_only():
  """Within: ``enabled()`` is False on this thread (traces use ``lax.conv_general_dilated``)."""
  before = getattr(_local, "xla_only", False)
  _local.xla_only = True
  try:
    with per_platform.portable_only():
      yield
  finally:
    _local.xla_only = before


def status() -> dict[str, Any]:
  """``{"enabled": bool, "reason": str, "library": path or None}`` for this thread's traces."""
  def off(reason: str) -> dict[str, Any]:
    return {"enabled": False, "reason": reason, "library": None}
  if getattr(_local, "xla_only", False) or per_platform.portable():
    return off("inside xla_only()")
  refusal = switches.onednn_refusal()
  if refusal is not None:
    return off(refusal)
  loaded = _load()
  return {"enabled": loaded["ok"], "reason": loaded["reason"], "library": loaded["library"]}


def enabled() -> bool:
  return status()["enabled"]


def _attrs(strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> dict[str, Any]:
  (pt, pb), (pl, pr) = pads
  return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt),
              pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr))


def _call(kind: str, like: jax.Array, out_shape: tuple[int, ...], a: jax.Array, b: jax.Array,
          strides, pads) -> jax.Array:
  """The kernel's result typed like ``like`` (dtype and sharding: a result without one would
  give its cotangents another type than their primals, and autodiff would insert a reshape
  into every branch of the program, the accelerator's included)."""
  result = jax.ShapeDtypeStruct(out_shape, like.dtype, sharding=jax.typeof(like).sharding)
  return jax.ffi.ffi_call(_TARGETS[kind], result, vmap_method="sequential")(
      a, b, **_attrs(strides, pads))


def _xla_conv(x_BHWC, w_HWIO, strides, pads):
  return lax.conv_general_dilated(x_BHWC, w_HWIO, strides, pads,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _forward(x_BHWC, w_HWIO, strides, pads, use_kernels=True):
  if x_BHWC.dtype == jnp.float32 or not use_kernels:
    return _xla_conv(x_BHWC, w_HWIO, strides, pads)
  out = jax.eval_shape(functools.partial(_xla_conv, strides=strides, pads=pads), x_BHWC,
                       w_HWIO)  # lax's output shape
  return _call("fwd", x_BHWC, out.shape, x_BHWC, w_HWIO, strides, pads)


def _xla_grads(x_BHWC, w_HWIO, strides, pads, g_BHWO):
  """XLA's input and weight gradients (the CPU branch with the kernels off)."""
  return jax.vjp(functools.partial(_xla_conv, strides=strides, pads=pads), x_BHWC, w_HWIO)[1](
      g_BHWO)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x_BHWC, w_HWIO, strides, pads, use_kernels):
  """The CPU branch: oneDNN's gradients (and bf16 forward) where ``use_kernels``, else XLA's,
  behind one ``custom_vjp`` either way (same residuals, so the accelerator branch of the
  program does not depend on the switch)."""
  return _forward(x_BHWC, w_HWIO, strides, pads, use_kernels)


def _conv_fwd(x_BHWC, w_HWIO, strides, pads, use_kernels):
  return _forward(x_BHWC, w_HWIO, strides, pads, use_kernels), (x_BHWC, w_HWIO)


def _conv_bwd(strides, pads, use_kernels, res, g_BHWO):
  x_BHWC, w_HWIO = res
  g_BHWO = g_BHWO.astype(x_BHWC.dtype)
  if not use_kernels:
    return _xla_grads(x_BHWC, w_HWIO, strides, pads, g_BHWO)
  dx = _call("bwd_data", x_BHWC, x_BHWC.shape, g_BHWO, w_HWIO, strides, pads)
  dw = _call("bwd_weights", w_HWIO, w_HWIO.shape, x_BHWC, g_BHWO, strides, pads)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def _plain_2d(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
              precision, kwargs) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4 or lhs.dtype != rhs.dtype or \
     lhs.dtype not in (jnp.float32, jnp.bfloat16):
    return False
  if feature_group_count != 1 or precision is not None or \
     any(v is not None for v in kwargs.values()):
    return False
  if any(d != 1 for d in tuple(lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1))):
    return False
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, **kwargs):
  """``lax.conv_general_dilated``; oneDNN gradients where the module docstring says."""
  plain = batch_group_count == 1 and _plain_2d(lhs, rhs, lhs_dilation, rhs_dilation,
                                               dimension_numbers, feature_group_count,
                                               precision, kwargs)
  if plain:
    pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
            if isinstance(padding, str) else padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    plain = all(p >= 0 for pair in pads for p in pair)
  if plain and any(s != 1 for s in window_strides) and rhs.shape[0] * rhs.shape[1] == 1:
    plain = False  # strided 1x1 (shortcut) convolutions: XLA's (the kernel corrupts the heap)
  def portable(x, w):
    return lax.conv_general_dilated(x, w, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision=precision, **kwargs)
  if not plain or per_platform.portable():
    return portable(lhs, rhs)
  strides, use = tuple(int(s) for s in window_strides), enabled()
  return per_platform.choose(lambda x, w: _conv(x, w, strides, pads, use), portable, lhs, rhs)
