"""EvTouch-Objects (tactile events): the TactileSGNet release, or any generic event arrays.

Contract: ``load_evtouch(config)`` -> ``DatasetSplits`` of ``{"image": float32 [T, H, W, 2],
"label": int32}``, ``T = config.num_steps``; the sensor is ``num_taxels`` rows by 1 column
(taxel id = row), so ``input_shape = (39, 1, 2)`` by default; ``static_input=False``. Layouts
(``config.data.layout``; ``auto``: the first present, in this order), under ``data_dir``:

- ``index``: ``samples.csv`` (header ``file,label,split``: the event file relative to
  data_dir, an integer class id, train or test) and one event array per sample
  (``events.read_event_array``: ``.npz`` or ``.csv`` with ``t`` (us), ``taxel`` (or ``x``,
  ``y``) and ``p``). Binned by event count (``events.FrameSpec``).
- ``tactilesgnet``: EvTouch-Objects as released with TactileSGNet, ``[Ev-Objects/]train/``
  and ``test/`` of ``sample_<i>_label_<k>.npy``, each a dense ``[39 taxels, 2 polarities, B
  time bins]`` array of 0/1 (B = 250); label ``k``; the two folders are the split. The B
  bins map onto T frames by time: frame ``j`` sums bins ``[floor(j B / T), floor((j + 1) B /
  T))`` (T = 250 keeps every bin; T = 10 sums 25 bins; T must not exceed B); polarity
  ``c`` of the array is channel ``c``.
Frames are resized to ``frame_size`` if it differs from the sensor and cached under a content
key (``events.content_key``: the same file name in train/ and test/ never shares an entry).
Labels must lie in ``0..num_classes-1`` (``num_classes = 0``: one more than the largest).
"""

from __future__ import annotations

import csv
import functools
import os
import re
from typing import Any

import numpy as np

from cfsnn_jax.data import events, verify
from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import (DataError, DatasetInfo, DatasetSplits, decoding,
                                    read_text, require_path)
from cfsnn_jax.errors import unknown_choice


def read_index(path: str) -> list[tuple[str, int, str]]:
  """``[(file, label, split)]`` of the sample index CSV."""
  text = read_text(path, "the sample index CSV with header file,label,split")
  reader = csv.DictReader(text.splitlines())
  if not reader.fieldnames or not {"file", "label", "split"} <= set(reader.fieldnames):
    raise DataError(path, f"header {reader.fieldnames}; expected file,label,split")
  rows = []
  for n, row in enumerate(reader, 2):
    try:
      label = int(row["label"])
    except (TypeError, ValueError):
      raise DataError(path, f"line {n}: unknown label {row['label']!r}; expected an integer "
                      "class id") from None
    if row["split"] not in ("train", "test"):
      raise DataError(path, f"line {n}: split {row['split']!r}; expected train or test")
    rows.append((row["file"], label, row["split"]))
  return rows


LAYOUTS = ("index", "tactilesgnet")
RELEASE_NAME = re.compile(r"^sample_(\d+)_label_(\d+)\.npy$")
RELEASE_DIR = "Ev-Objects"


def find_layout(data_dir: str, layout: str, index_file: str) -> tuple[str, str]:
  if layout not in ("auto",) + LAYOUTS:
    raise unknown_choice("data.layout for evtouch", layout, ("auto",) + LAYOUTS)
  require_path(data_dir, "the EvTouch folder (samples.csv + event arrays, or the "
               "TactileSGNet Ev-Objects/ train/ and test/)", is_dir=True)
  for name in LAYOUTS if layout == "auto" else (layout,):
    if name == "index" and (layout == "index" or
                            os.path.isfile(os.path.join(data_dir, index_file))):
      return name, data_dir
    if name == "tactilesgnet":
      for root in (os.path.join(data_dir, RELEASE_DIR), data_dir):
        if os.path.isdir(os.path.join(root, "train")):
          return name, root
  raise DataError(data_dir, f"no EvTouch {'layout' if layout == 'auto' else layout} found; "
                  f"expected {index_file} with event arrays, or [{RELEASE_DIR}/]train/ and "
                  "test/ of sample_<i>_label_<k>.npy (TactileSGNet)")


def bins_to_frames(bins_KPB: np.ndarray, num_frames: int, path: str) -> np.ndarray:
  """``[taxels, 2, B]`` time bins -> ``float32 [T, taxels, 1, 2]`` (see module doc)."""
  k, p, b = bins_KPB.shape
  if num_frames > b:
    raise DataError(path, f"{b} time bins cannot fill T = {num_frames} frames; expected "
                    f"config.num_steps <= {b}")
  edges = (np.arange(num_frames + 1) * b) // num_frames
  summed = np.add.reduceat(bins_KPB.astype(np.float32), edges[:-1], axis=2)  # [K, P, T]
  return np.ascontiguousarray(summed.transpose(2, 0, 1)[:, :, None, :])


def read_release(path: str, num_frames: int, num_taxels: int) -> np.ndarray:
  with decoding(path, "a TactileSGNet [39, 2, B] array of 0/1"):
    with events.NPY_LOCK:
      arr = np.load(path, allow_pickle=False)
  if arr.ndim != 3 or arr.shape[:2] != (num_taxels, 2):
    raise DataError(path, f"array of shape {arr.shape}; expected [{num_taxels} taxels, 2 "
                    "polarities, time bins] (TactileSGNet Ev-Objects)")
  return bins_to_frames(arr, num_frames, path)


def check_release(path: str) -> None:
  verify.check_npy(path)


def _release_samples(root: str, split: str, spec: events.FrameSpec
                     ) -> list[events.Sample]:
  folder = require_path(os.path.join(root, split), f"the TactileSGNet {split}/ folder",
                        is_dir=True)
  found = []
  for name in os.listdir(folder):
    m = RELEASE_NAME.match(name)
    if m:
      found.append((int(m.group(1)), int(m.group(2)), os.path.join(folder, name)))
  return [events.Sample(("tactilesgnet", path), 0, label, events.content_key([path], 0, spec),
                        path) for _, label, path in sorted(found)]


def _decode_group(group: tuple, spec: events.FrameSpec) -> dict[int, Any]:
  layout, path = group
  if layout == "tactilesgnet":
    return {0: read_release(path, spec.num_frames, spec.sensor[0])}
  return {0: events.read_event_array(path)}


def load_evtouch(config: Any) -> DatasetSplits:
  opts = data_options(config, "evtouch")
  spec = events.FrameSpec(int(config.num_steps), (int(opts.num_taxels), 1),
                          tuple(int(s) for s in opts.frame_size), int(opts.denoise_us),
                          int(opts.refractory_us))
  layout, root = find_layout(config.data_dir, opts.layout, opts.index_file)
  events.check_layout_supports(layout == "tactilesgnet", opts, root)
  if layout == "tactilesgnet":
    splits = {s: _release_samples(root, s, spec) for s in ("train", "test")}
    where = root
  else:
    splits, where = _index_samples(config.data_dir, opts, spec)
  for split, samples in splits.items():
    if not samples:
      raise DataError(where, f"no {split} samples; expected at least one per split")
  labels = [s.label for ss in splits.values() for s in ss]
  num_classes = int(opts.num_classes) or 1 + max(labels)
  bad = [s for ss in splits.values() for s in ss if not 0 <= s.label < num_classes]
  if bad:
    raise DataError(bad[0].name, f"unknown label {bad[0].label}; expected "
                    f"0..{num_classes - 1}")
  cache = events.make_cache(opts, config.data_dir, "evtouch")
  decode = functools.partial(_decode_group, spec=spec)
  info = DatasetInfo(name="evtouch", num_classes=num_classes, input_shape=spec.size + (2,),
                     static_input=False, frame_spec=spec)
  check = check_release if layout == "tactilesgnet" else events.check_event_array
  return DatasetSplits(
      events.EventFrameSource(splits["train"], decode, spec, cache,
                              events_mode=bool(opts.time_jitter_us)),
      events.EventFrameSource(splits["test"], decode, spec, cache), info,
      [(s.name, check) for s in splits["train"] + splits["test"]])


def _index_samples(data_dir: str, opts: Any, spec: events.FrameSpec
                   ) -> tuple[dict[str, list[events.Sample]], str]:
  index_path = os.path.join(data_dir, opts.index_file)
  rows = read_index(index_path)
  if not rows:
    raise DataError(index_path, "no samples; expected one row per event array")
  splits: dict[str, list] = {"train": [], "test": []}
  for n, (file, label, split) in enumerate(rows, 2):
    if opts.num_classes and not 0 <= label < opts.num_classes:
      raise DataError(index_path, f"line {n}: unknown label {label}; expected "
                      f"0..{opts.num_classes - 1}")
    path = require_path(os.path.join(data_dir, file), "an event array listed in "
                        + opts.index_file)
    splits[split].append(events.Sample(("index", path), 0, label,
                                       events.content_key([path], 0, spec), path))
  return splits, index_path
