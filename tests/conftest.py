"""Test set-up: 4 simulated CPU devices, float32 matmuls, no network access, and one
persistent JAX compilation cache per test session (a fresh directory, inherited by the CLI
subprocesses the tests start, so the many identical ``:tiny`` steps compile once)."""

import importlib.util
import os
import socket
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-dir")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cfsnn_jax_tests_jit_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # noqa: E402

# The tests import this tree's cfsnn_jax. An editable install of another copy adds an import
# finder that answers for every cfsnn_jax.* name this tree lacks (a module moved away would
# then load from the other copy, silently): it is removed when this tree is the one imported.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if (importlib.util.find_spec("cfsnn_jax").origin or "").startswith(_ROOT):
  sys.meta_path[:] = [f for f in sys.meta_path
                      if not getattr(f, "__module__", "").startswith("__editable___cfsnn_jax")]

_real_connect = socket.socket.connect
_real_create_connection = socket.create_connection


def _is_local(address) -> bool:
  host = address[0] if isinstance(address, tuple) else address
  return isinstance(host, str) and (host in ("localhost", "::1") or host.startswith("127.")
                                    or host.startswith("/"))


def _guarded_connect(self, address):
  if self.family == socket.AF_UNIX or _is_local(address):
    return _real_connect(self, address)
  raise RuntimeError(f"network access blocked in tests: {address!r}")


def _guarded_create_connection(address, *args, **kwargs):
  if _is_local(address):
    return _real_create_connection(address, *args, **kwargs)
  raise RuntimeError(f"network access blocked in tests: {address!r}")


socket.socket.connect = _guarded_connect
socket.create_connection = _guarded_create_connection


@pytest.fixture
def tmp_workdir(tmp_path):
  return str(tmp_path / "workdir")


def pytest_sessionfinish(session, exitstatus):
  if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller cleans up
    return
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
  if os.path.basename(cache).startswith("cfsnn_jax_tests_jit_"):
    import shutil
    shutil.rmtree(cache, ignore_errors=True)
