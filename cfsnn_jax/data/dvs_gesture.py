"""DVS128 Gesture in the layouts researchers hold (the official trial split in every one).

Contract: ``load_dvs_gesture(config)`` -> ``DatasetSplits`` of ``{"image": float32 [T, H, W,
2], "label": int32}`` with ``T = config.num_steps`` and ``(H, W) = config.data.frame_size``
(default 128x128, the sensor: no resize); ``DatasetInfo(static_input=False)``, 11 classes,
label = gesture class - 1. Layouts (``config.data.layout``; ``auto``: the first present, in
this order), under ``config.data_dir``:

- ``aedat``: IBM's archive, ``[DvsGesture/]`` with ``trials_to_train.txt`` /
  ``trials_to_test.txt`` (one ``<trial>.aedat`` per line), ``<trial>.aedat`` (AEDAT 3.1) and
  ``<trial>_labels.csv`` (``class,startTime_usec,endTime_usec``). Every CSV row is one
  sample: the polarity events with ``start <= t < end`` (``aedat.read_aedat31``); each
  recording is decoded once for all its gestures.
- ``tonic``: tonic's download, ``[DVSGesture/]ibmGestureTrain/<user>_<lighting>/<label>.npy``
  and ``ibmGestureTest/...``: ``[N, 4]`` arrays with columns ``x, y, p, t`` (t in ms, read
  as ``t * 1000`` us), label = the file's stem (0..10), events sorted by time (stable).
- ``events_np``: SpikingJelly's ``events_np/{train,test}/<label>/<trial>_<k>.npz``; label =
  the folder's number (SpikingJelly's own ``DatasetFolder`` numbers the sorted folder names,
  '10' before '2': that permutation is not ours).
- ``frames``: SpikingJelly's ``frames_number_<T>_split_by_<number|time>/{train,test}/<label>/
  <trial>_<k>.npz`` (pre-binned; only resized here).
Events (``x``, ``y``, ``p`` as stored) -> T frames by event count on the 128x128 sensor
(``events.FrameSpec``), resized and cached under a content key. A class outside 1..11 or a
listed trial without its files is one ``DataError`` line.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from cfsnn_jax.data import aedat, events, spikingjelly_layout as sj, verify
from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import (DataError, DatasetInfo, DatasetSplits, decoding,
                                    read_text, require_path)
from cfsnn_jax.errors import unknown_choice

NUM_CLASSES = 11
SENSOR_SIZE = 128


LAYOUTS = ("aedat", "tonic", "events_np", "frames")
TONIC_DIRS = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}
_TREES = ("[DvsGesture/]trials_to_train.txt + <trial>.aedat + <trial>_labels.csv (original), "
          "[DVSGesture/]ibmGestureTrain/<user>_<lighting>/<label>.npy (tonic), "
          "events_np/{train,test}/<label>/*.npz or frames_number_<T>_split_by_<s>/{train,test}/"
          "<label>/*.npz (SpikingJelly)")


def find_layout(data_dir: str, layout: str, num_frames: int, split_by: str
                ) -> tuple[str, str]:
  """``(layout, root)`` of the DVS128 Gesture copy under ``data_dir``."""
  if layout not in ("auto",) + LAYOUTS:
    raise unknown_choice("data.layout for dvs_gesture", layout, ("auto",) + LAYOUTS)
  for name in LAYOUTS if layout == "auto" else (layout,):
    if name == "aedat":
      for root in (os.path.join(data_dir, "DvsGesture"), data_dir):
        if os.path.isfile(os.path.join(root, "trials_to_train.txt")):
          return name, root
    elif name == "tonic":
      for root in (os.path.join(data_dir, "DVSGesture"), data_dir):
        if os.path.isdir(os.path.join(root, TONIC_DIRS["train"])):
          return name, root
    elif name == "events_np":
      root = os.path.join(data_dir, sj.EVENTS_DIR)
      if os.path.isdir(os.path.join(root, "train")):
        return name, root
    elif layout == "frames" or sj.has_frames(data_dir):
      return name, sj.find_frames_folder(data_dir, num_frames, split_by)
  raise DataError(data_dir, f"no DVS128 Gesture {'layout' if layout == 'auto' else layout} "
                  f"found; expected one of: {_TREES}")


def read_trial_list(path: str) -> list[str]:
  text = read_text(path, "the official trial list (one <trial>.aedat per line)")
  return [line.strip() for line in text.splitlines() if line.strip()]


def read_labels(path: str) -> list[tuple[int, int, int]]:
  """``[(label 0..10, start_us, end_us)]`` of one ``<trial>_labels.csv``."""
  text = read_text(path, "the label CSV (class,startTime_usec,endTime_usec) of the trial")
  rows = []
  for n, row in enumerate(csv.reader(text.splitlines()), 1):
    if not row or not "".join(row).strip() or row[0].strip().lower() == "class":
      continue
    try:
      cls, start, end = (int(v) for v in row[:3])
    except ValueError:
      raise DataError(path, f"line {n}: expected class,startTime_usec,endTime_usec "
                      f"integers, got {','.join(row)[:60]!r}") from None
    if not 1 <= cls <= NUM_CLASSES:
      raise DataError(path, f"line {n}: unknown label {cls}; expected a gesture class "
                      f"1..{NUM_CLASSES}")
    rows.append((cls - 1, start, end))
  return rows


def decode_trial(path: str, segments: tuple[tuple[int, int, int], ...]
                 ) -> dict[int, events.Events]:
  """Events of every ``(row, start_us, end_us)`` gesture of one recording."""
  ev = aedat.read_aedat31(path)
  return {k: ev.select((ev.t >= start) & (ev.t < end)) for k, start, end in segments}


def read_tonic(path: str) -> events.Events:
  """Events of one tonic ``<label>.npy`` (columns x, y, p, t in ms)."""
  with decoding(path, "a tonic DVSGesture .npy with columns x, y, p, t"):
    with events.NPY_LOCK:
      arr = np.load(path, allow_pickle=False)
  if arr.ndim != 2 or arr.shape[1] != 4:
    raise DataError(path, f"array of shape {arr.shape}; expected [N, 4] columns x, y, p, t "
                    "(tonic DVSGesture)")
  t = np.rint(np.asarray(arr[:, 3], np.float64) * 1000).astype(np.int64)
  order = np.argsort(t, kind="stable")
  cols = [np.asarray(arr[:, k]).astype(np.int64)[order] for k in range(3)]
  return events.Events(t[order], cols[0], cols[1], (cols[2] != 0).astype(np.int64))


def check_tonic(path: str) -> None:
  verify.check_npy(path)
  with open(path, "rb") as f:
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    with events.NPY_LOCK:
      shape = read(f)[0]
  if len(shape) != 2 or shape[1] != 4:
    raise DataError(path, f"array of shape {shape}; expected [N, 4] columns x, y, p, t")


def _decode_group(group: tuple) -> dict[Any, Any]:
  layout, path = group[0], group[1]
  if layout == "aedat":
    return decode_trial(path, group[2])
  if layout == "tonic":
    return {0: read_tonic(path)}
  if layout == "events_np":
    return {0: sj.read_events(path)}
  return {0: sj.read_frames(path)}


def _original_samples(root: str, list_file: str, spec: events.FrameSpec
                      ) -> list[events.Sample]:
  samples = []
  for trial in read_trial_list(os.path.join(root, list_file)):
    stem = trial[:-len(".aedat")] if trial.endswith(".aedat") else trial
    path = require_path(os.path.join(root, stem + ".aedat"),
                        f"the AEDAT 3.1 recording listed in {list_file}")
    csv_path = os.path.join(root, stem + "_labels.csv")
    labels = read_labels(csv_path)
    segments = tuple((k, s, e) for k, (_, s, e) in enumerate(labels))
    for k, (lab, s, e) in enumerate(labels):
      key = events.content_key([path, csv_path], [k, s, e], spec)
      samples.append(events.Sample(("aedat", path, segments), k, lab, key,
                                   f"{path}[{s}:{e}]"))
  return samples


def _label_folder_samples(root: str, split: str, layout: str, spec: events.FrameSpec
                          ) -> list[events.Sample]:
  """SpikingJelly ``<split>/<label>/*.npz`` (label = the folder's number)."""
  base = require_path(os.path.join(root, split), f"the {split}/ folder of the {layout} layout",
                      is_dir=True)
  samples = []
  for folder in sorted(os.listdir(base), key=lambda n: (not n.isdigit(), int(n) if
                                                         n.isdigit() else 0, n)):
    if not os.path.isdir(os.path.join(base, folder)):
      continue
    if not folder.isdigit() or not 0 <= int(folder) < NUM_CLASSES:
      raise DataError(os.path.join(base, folder), f"unknown label folder {folder!r}; expected "
                      f"0..{NUM_CLASSES - 1} (gesture class - 1)")
    for name in sorted(os.listdir(os.path.join(base, folder))):
      if name.endswith(".npz"):
        path = os.path.join(base, folder, name)
        samples.append(events.Sample((layout, path), 0, int(folder),
                                     events.content_key([path], 0, spec), path))
  return samples


def _tonic_samples(root: str, split: str, spec: events.FrameSpec) -> list[events.Sample]:
  base = require_path(os.path.join(root, TONIC_DIRS[split]), f"tonic's {TONIC_DIRS[split]}/",
                      is_dir=True)
  samples = []
  for trial in sorted(os.listdir(base)):
    folder = os.path.join(base, trial)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder), key=lambda n: (len(n), n)):
      if not name.endswith(".npy"):
        continue
      stem = name[:-4]
      if not stem.isdigit() or not 0 <= int(stem) < NUM_CLASSES:
        raise DataError(os.path.join(folder, name), f"unknown label {stem!r}; expected "
                        f"<label>.npy with label 0..{NUM_CLASSES - 1}")
      path = os.path.join(folder, name)
      samples.append(events.Sample(("tonic", path), 0, int(stem),
                                   events.content_key([path], 0, spec), path))
  return samples


_CHECK = {"aedat": aedat.check_aedat31, "tonic": check_tonic, "events_np": sj.check_events,
          "frames": sj.check_frames}


def frame_spec(config: Any, opts: Any) -> events.FrameSpec:
  return events.FrameSpec(int(config.num_steps), (SENSOR_SIZE, SENSOR_SIZE),
                          tuple(int(s) for s in opts.frame_size), int(opts.denoise_us),
                          int(opts.refractory_us))


def load_dvs_gesture(config: Any) -> DatasetSplits:
  opts = data_options(config, "dvs_gesture")
  spec = frame_spec(config, opts)
  layout, root = find_layout(config.data_dir, opts.layout, spec.num_frames, opts.sj_split_by)
  events.check_layout_supports(layout == "frames", opts, root)
  splits = {}
  for split in ("train", "test"):
    if layout == "aedat":
      splits[split] = _original_samples(root, f"trials_to_{split}.txt", spec)
    elif layout == "tonic":
      splits[split] = _tonic_samples(root, split, spec)
    else:
      splits[split] = _label_folder_samples(root, split, layout, spec)
    if not splits[split]:
      raise DataError(root, f"no {split} samples in the {layout} layout; expected {_TREES}")
  cache = events.make_cache(opts, config.data_dir, "dvs_gesture")
  info = DatasetInfo(name="dvs_gesture", num_classes=NUM_CLASSES, input_shape=spec.size + (2,),
                     static_input=False, frame_spec=spec)
  paths = dict.fromkeys(s.group[1] for s in splits["train"] + splits["test"])
  return DatasetSplits(
      events.EventFrameSource(splits["train"], _decode_group, spec, cache,
                              events_mode=bool(opts.time_jitter_us)),
      events.EventFrameSource(splits["test"], _decode_group, spec, cache), info,
      [(p, _CHECK[layout]) for p in paths])
