"""DVS128 Gesture from the original AEDAT 3.1 recordings, label CSVs and trial lists.

Contract: ``load_dvs_gesture(config)`` -> ``DatasetSplits`` of ``{"image": float32 [T, H, W,
2], "label": int32}`` with ``T = config.num_steps`` and ``(H, W) = config.data.frame_size``
(default 128x128, the sensor: no resize); ``DatasetInfo(static_input=False)``, 11 classes.
Layout under ``config.data_dir`` (or ``config.data_dir/DvsGesture``), as in IBM's archive::

  trials_to_train.txt / trials_to_test.txt   the official split: one <trial>.aedat per line
  <trial>.aedat                              AEDAT 3.1 recording (user01_fluorescent.aedat)
  <trial>_labels.csv                         class,startTime_usec,endTime_usec per gesture

Every CSV row is one sample: the polarity events of ``<trial>.aedat`` with
``start <= t < end`` (``aedat.read_aedat31``), label ``class - 1`` (classes 1..11), binned
into T frames by event count on the 128x128 sensor (``events.events_to_frames``; ``x``, ``y``,
``p`` as stored), resized and cached on disk. Each recording is decoded once for all of its
gestures. A class outside 1..11 or a listed trial without its files is one ``DataError`` line.
"""

from __future__ import annotations

import csv
import functools
import os
from typing import Any

import numpy as np

from cfsnn_jax.data import aedat, events
from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import (DataError, DatasetInfo, DatasetSplits, read_text,
                                    require_path)

NUM_CLASSES = 11
SENSOR_SIZE = 128


def find_root(data_dir: str) -> str:
  nested = os.path.join(data_dir, "DvsGesture")
  root = nested if os.path.isdir(nested) else data_dir
  require_path(os.path.join(root, "trials_to_train.txt"),
               "DvsGesture/trials_to_train.txt (the original DVS128 Gesture layout)")
  return root


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


def decode_trial(path: str, segments: tuple[tuple[str, int, int], ...], num_frames: int,
                 size: tuple[int, int]) -> dict[str, np.ndarray]:
  """Frames of every ``(key, start_us, end_us)`` gesture of one recording."""
  ev = aedat.read_aedat31(path)
  out = {}
  for key, start, end in segments:
    seg = ev.select((ev.t >= start) & (ev.t < end))
    try:
      frames = events.events_to_frames(seg, num_frames, SENSOR_SIZE, SENSOR_SIZE)
    except ValueError as e:
      raise DataError(path, f"{e}; expected DVS128 events") from None
    out[key] = events.resize_frames(frames, size)
  return out


def _samples(root: str, list_file: str) -> list[tuple[Any, str, int]]:
  samples = []
  for trial in read_trial_list(os.path.join(root, list_file)):
    stem = trial[:-len(".aedat")] if trial.endswith(".aedat") else trial
    path = require_path(os.path.join(root, stem + ".aedat"),
                        f"the AEDAT 3.1 recording listed in {list_file}")
    labels = read_labels(os.path.join(root, stem + "_labels.csv"))
    segments = tuple((f"{stem}_{k}", s, e) for k, (_, s, e) in enumerate(labels))
    samples += [((path, segments), key, lab) for (key, _, _), (lab, _, _)
                in zip(segments, labels)]
  return samples


def _decode_group(group: tuple[str, tuple], num_frames: int, size: tuple[int, int]
                  ) -> dict[str, np.ndarray]:
  return decode_trial(group[0], group[1], num_frames, size)


def load_dvs_gesture(config: Any) -> DatasetSplits:
  opts = data_options(config, "dvs_gesture")
  size = tuple(int(s) for s in opts.frame_size)
  num_frames = int(config.num_steps)
  root = find_root(config.data_dir)
  train = _samples(root, "trials_to_train.txt")
  test = _samples(root, "trials_to_test.txt")
  cache = events.make_cache(opts, config.data_dir, "dvs_gesture", num_frames, size)
  decode = functools.partial(_decode_group, num_frames=num_frames, size=size)
  shape = (num_frames,) + size + (2,)
  info = DatasetInfo(name="dvs_gesture", num_classes=NUM_CLASSES, input_shape=size + (2,),
                     static_input=False)
  files = [(p, aedat.check_aedat31) for p in dict.fromkeys(s[0][0] for s in train + test)]
  return DatasetSplits(events.EventFrameSource(train, decode, shape, cache),
                       events.EventFrameSource(test, decode, shape, cache), info, files)
