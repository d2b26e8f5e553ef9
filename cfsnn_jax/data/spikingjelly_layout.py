"""SpikingJelly's processed event datasets on disk: ``events_np/`` and ``frames_number_*/``.

Contract (the files SpikingJelly's ``NeuromorphicDatasetFolder`` writes under its root):
- ``events_np/<sub>/<name>.npz``: one recording per file, arrays ``t, x, y, p``
  (``np.savez`` or ``np.savez_compressed``); ``read_events(path) -> events.Events`` as stored
  (SpikingJelly already applied its sensor mapping, which is ours).
- ``frames_number_<T>_split_by_<number|time>/<sub>/<name>.npz``: array ``frames`` of shape
  ``[T, 2, H, W]`` (polarity first); ``read_frames(path) -> float32 [T, H, W, 2]`` (ours is
  channel-last). ``split_by_number`` is our binning rule; ``split_by_time`` cuts T equal time
  windows instead (SpikingJelly's rule, taken as given).
- ``frames_folder(root, T, split_by)``: the folder name; ``find_frames_folder`` picks the one
  for ``T`` (a one-line ``DataError`` listing those present otherwise).
Header checks for the pass before training: ``check_events`` / ``check_frames``.
"""

from __future__ import annotations

import os
import re

import numpy as np

from cfsnn_jax.data import verify
from cfsnn_jax.data.events import NPY_LOCK, Events
from cfsnn_jax.data.sources import DataError, decoding

EVENTS_DIR = "events_np"
EVENT_KEYS = ("t", "x", "y", "p")
SPLIT_BY = ("number", "time")


def frames_folder(num_frames: int, split_by: str) -> str:
  return f"frames_number_{int(num_frames)}_split_by_{split_by}"


def find_frames_folder(root: str, num_frames: int, split_by: str) -> str:
  if split_by not in SPLIT_BY:
    from cfsnn_jax.errors import unknown_choice
    raise unknown_choice("data.sj_split_by", split_by, SPLIT_BY)
  path = os.path.join(root, frames_folder(num_frames, split_by))
  if os.path.isdir(path):
    return path
  present = sorted(n for n in os.listdir(root) if re.fullmatch(r"frames_number_\d+_split_by_"
                                                               r"(number|time)", n)) \
      if os.path.isdir(root) else []
  raise DataError(path, f"missing directory; expected SpikingJelly frames for T = "
                  f"{num_frames} split by {split_by} (found: {', '.join(present) or 'none'}; "
                  "set config.num_steps / data.sj_split_by to match, or use events_np/)")


def has_frames(root: str) -> bool:
  return os.path.isdir(root) and any(n.startswith("frames_number_") for n in os.listdir(root))


def read_events(path: str) -> Events:
  with decoding(path, "a SpikingJelly events_np .npz with arrays t, x, y, p"):
    with NPY_LOCK, np.load(path, allow_pickle=False) as z:
      missing = [k for k in EVENT_KEYS if k not in z.files]
      if missing:
        raise DataError(path, f"missing arrays {missing}; expected t, x, y, p (SpikingJelly "
                        "events_np)")
      cols = [np.asarray(z[k]).astype(np.int64).ravel() for k in EVENT_KEYS]
  if len({len(c) for c in cols}) != 1:
    raise DataError(path, "arrays t, x, y, p differ in length")
  return Events(*cols)


def read_frames(path: str) -> np.ndarray:
  with decoding(path, "a SpikingJelly frames .npz with array frames [T, 2, H, W]"):
    with NPY_LOCK, np.load(path, allow_pickle=False) as z:
      if "frames" not in z.files:
        raise DataError(path, f"no array 'frames' (found {z.files}); expected SpikingJelly "
                        "frames [T, 2, H, W]")
      frames = np.asarray(z["frames"])
  if frames.ndim != 4 or frames.shape[1] != 2:
    raise DataError(path, f"frames of shape {frames.shape}; expected [T, 2, H, W]")
  return np.ascontiguousarray(frames.transpose(0, 2, 3, 1), dtype=np.float32)


def check_events(path: str) -> None:
  members = verify.npz_members(path, EVENT_KEYS)
  if len({members[k][0] for k in EVENT_KEYS}) != 1:
    raise DataError(path, "arrays t, x, y, p differ in length")


def check_frames(path: str) -> None:
  members = verify.npz_members(path, ("frames",))
  shape = members["frames"][0]
  if len(shape) != 4 or shape[1] != 2:
    raise DataError(path, f"frames of shape {shape}; expected [T, 2, H, W]")
