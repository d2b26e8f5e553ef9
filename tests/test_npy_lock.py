"""Every np.load of the data loaders runs under ``events.NPY_LOCK`` (numpy's header parser is
not thread-safe on CPython < 3.11.9: grain's reader threads crashed evtouch:tiny with
``SystemError: AST constructor recursion depth mismatch``)."""

import numpy as np
import pytest

from cfsnn_jax.data import dvs_gesture, events, evtouch, spikingjelly_layout


@pytest.fixture
def load_checks_lock(monkeypatch):
  real = np.load
  calls = []

  def checked(*args, **kwargs):
    assert events.NPY_LOCK.locked(), "np.load outside events.NPY_LOCK"
    calls.append(args[0])
    return real(*args, **kwargs)

  monkeypatch.setattr(np, "load", checked)
  return calls


def test_every_reader_loads_under_the_lock(tmp_path, load_checks_lock):
  ev = {k: np.arange(4, dtype=np.int64) % 2 for k in ("t", "x", "y", "p")}
  np.savez(tmp_path / "ev.npz", **ev)
  np.savez(tmp_path / "fr.npz", frames=np.zeros((2, 2, 4, 4), np.float32))
  np.save(tmp_path / "tonic.npy", np.zeros((3, 4), np.float32))
  np.save(tmp_path / "touch.npy", np.zeros((39, 2, 10), np.float32))
  assert len(spikingjelly_layout.read_events(str(tmp_path / "ev.npz")).t) == 4
  assert spikingjelly_layout.read_frames(str(tmp_path / "fr.npz")).shape == (2, 4, 4, 2)  # THWC
  dvs_gesture.read_tonic(str(tmp_path / "tonic.npy"))
  assert evtouch.read_release(str(tmp_path / "touch.npy"), 5, 39).shape[0] == 5
  cache = events.FrameCache(str(tmp_path / "cache"))
  cache.save("abcd", np.ones((2, 3), np.float32))
  assert cache.load("abcd", (2, 3)) is not None
  assert len(load_checks_lock) == 5
