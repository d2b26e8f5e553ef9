"""EvTouch-Objects (tactile events) through the generic event-array loader.

Contract: ``load_evtouch(config)`` -> ``DatasetSplits`` of ``{"image": float32 [T, H, W, 2],
"label": int32}``, ``T = config.num_steps``; the sensor is ``num_taxels`` rows by 1 column
(taxel id = row), so ``input_shape = (39, 1, 2)`` by default; ``static_input=False``. Layout
under ``config.data_dir``::

  samples.csv          header file,label,split; one row per sample: the event file (relative
                       to data_dir), an integer class id, and train or test
  <file>.npz | .csv    one event array per sample (events.read_event_array): t (us), taxel
                       (or x, y) and polarity p in {0, 1}

Binning is the shared rule (``events.events_to_frames``: T frames by event count, one channel
per polarity), then the optional resize to ``frame_size``; frames are cached on disk. Labels
must lie in ``0..num_classes-1`` (``num_classes = 0``: one more than the largest label seen).
Any dataset of event arrays in this layout loads the same way.
"""

from __future__ import annotations

import csv
import functools
import os
from typing import Any

import numpy as np

from cfsnn_jax.data import events
from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import (DataError, DatasetInfo, DatasetSplits, read_text,
                                    require_path)


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


def decode_array(path: str, num_frames: int, sensor: tuple[int, int],
                 size: tuple[int, int]) -> np.ndarray:
  ev = events.read_event_array(path)
  try:
    frames = events.events_to_frames(ev, num_frames, *sensor)
  except ValueError as e:
    raise DataError(path, f"{e}; expected taxel ids below num_taxels") from None
  return events.resize_frames(frames, size)


def _decode_group(group: tuple[str, str], num_frames: int, sensor: tuple[int, int],
                  size: tuple[int, int]) -> dict[str, np.ndarray]:
  path, key = group
  return {key: decode_array(path, num_frames, sensor, size)}


def load_evtouch(config: Any) -> DatasetSplits:
  opts = data_options(config, "evtouch")
  size = tuple(int(s) for s in opts.frame_size)
  sensor = (int(opts.num_taxels), 1)
  num_frames = int(config.num_steps)
  require_path(config.data_dir, "the EvTouch folder with samples.csv and the event arrays",
               is_dir=True)
  index_path = os.path.join(config.data_dir, opts.index_file)
  rows = read_index(index_path)
  if not rows:
    raise DataError(index_path, "no samples; expected one row per event array")
  num_classes = int(opts.num_classes) or 1 + max(r[1] for r in rows)
  splits: dict[str, list] = {"train": [], "test": []}
  for n, (file, label, split) in enumerate(rows, 2):
    if not 0 <= label < num_classes:
      raise DataError(index_path, f"line {n}: unknown label {label}; expected "
                      f"0..{num_classes - 1}")
    path = require_path(os.path.join(config.data_dir, file), "an event array listed in "
                        + opts.index_file)
    key = os.path.splitext(file)[0].replace(os.sep, "__")
    splits[split].append(((path, key), key, label))
  for split, samples in splits.items():
    if not samples:
      raise DataError(index_path, f"no {split} samples; expected rows with split={split}")
  cache = events.make_cache(opts, config.data_dir, "evtouch", num_frames, size)
  decode = functools.partial(_decode_group, num_frames=num_frames, sensor=sensor, size=size)
  shape = (num_frames,) + size + (2,)
  info = DatasetInfo(name="evtouch", num_classes=num_classes, input_shape=size + (2,),
                     static_input=False)
  files = [(s[0][0], events.check_event_array) for s in splits["train"] + splits["test"]]
  return DatasetSplits(events.EventFrameSource(splits["train"], decode, shape, cache),
                       events.EventFrameSource(splits["test"], decode, shape, cache), info,
                       files)
