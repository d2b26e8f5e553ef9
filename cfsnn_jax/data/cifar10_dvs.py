"""CIFAR10-DVS in the layouts researchers hold, always with our published split.

Contract: ``load_cifar10_dvs(config)`` -> ``DatasetSplits`` of ``{"image": float32 [T, H, W,
2], "label": int32}`` with ``T = config.num_steps`` and ``(H, W) = config.data.frame_size``
(default 48x48); ``DatasetInfo(static_input=False, input_shape=(H, W, 2))``. Classes in the
CIFAR-10 order below (label = position); recording ``n`` of a class is the file whose stem
is ``<n>`` or ends in ``_<n>``. Layouts (``config.data.layout``; ``auto`` takes the first one present, in
this order), under ``config.data_dir``:

- ``aedat``: the original release, ``[CIFAR10-DVS/]<class>/cifar10_<class>_<n>.aedat``
  (AEDAT 2.0). DVS128 addresses (``aedat.dvs128_address``) give raw ``(x_r, y_r, p_r)``; the
  sensor image is ``x = 127 - y_r``, ``y = 127 - x_r``, ``p = 1 - p_r`` (SpikingJelly's
  mapping, so frames match published pipelines).
- ``aedat4``: iniVation's DV conversion that tonic downloads, ``[CIFAR10DVS/]<class>/
  *_<n>.aedat4`` (``aedat4.read_aedat4``). The DV converter stores ``x4 = 127 - x_r``,
  ``y4 = 127 - y_r``, ``p4 = 1 - p_r``: the transpose of our image, so ``x = y4``, ``y = x4``,
  ``p = p4`` gives the same frames as the AEDAT 2.0 file.
- ``events_np``: SpikingJelly's ``events_np/<class>/cifar10_<class>_<n>.npz`` (``t, x, y,
  p`` already in our mapping).
- ``frames``: SpikingJelly's ``frames_number_<T>_split_by_<number|time>/<class>/
  cifar10_<class>_<n>.npz`` (pre-binned ``[T, 2, 128, 128]``; ``T`` must equal
  ``config.num_steps``; ``data.sj_split_by`` picks the folder); only resized here, so the
  event filters and time jitter are refused.
Events -> T frames by event count on the 128x128 sensor (``events.FrameSpec``), resized and
cached on disk under a content key (``events.content_key``).

Split (no official one exists): ``data/splits/cifar10_dvs_split.json`` lists the test
recordings of each class. Rule (``make_split``): labels ``[0]*1000 + [1]*1000 + ...`` in the
class order; ``sources.stratified_split(labels, 0.1, seed=0)`` (one
``np.random.default_rng(0)``, per class in order a permutation, its first 100 go to test);
recording number = index within the class. 900 train / 100 test per class. Train = every
number below ``num_per_class`` not listed as test.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from cfsnn_jax.data import aedat, aedat4, events, spikingjelly_layout as sj
from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import (DataError, DatasetInfo, DatasetSplits, require_path,
                                    stratified_split)
from cfsnn_jax.errors import unknown_choice

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
SENSOR_SIZE = 128
PUBLISHED_SPLIT = os.path.join(os.path.dirname(__file__), "splits", "cifar10_dvs_split.json")
SPLIT_SEED = 0
TEST_FRACTION = 0.1


def make_split(num_per_class: int = 1000, seed: int = SPLIT_SEED,
               test_fraction: float = TEST_FRACTION) -> dict[str, Any]:
  """The split index (the JSON content) produced by the documented rule."""
  labels = np.repeat(np.arange(len(CLASSES)), num_per_class)
  _, test_idx = stratified_split(labels, test_fraction, seed)
  test = {c: sorted(int(i) - k * num_per_class for i in test_idx if labels[i] == k)
          for k, c in enumerate(CLASSES)}
  return {
      "dataset": "cifar10_dvs",
      "rule": ("labels = [0]*n + [1]*n + ... in the class order; "
               "cfsnn_jax.data.sources.stratified_split(labels, test_fraction, seed); "
               "recording number = index - class * n"),
      "seed": seed, "test_fraction": test_fraction, "num_per_class": num_per_class,
      "classes": list(CLASSES), "test": test,
  }


def read_split(path: str) -> tuple[int, dict[str, set[int]]]:
  require_path(path, "a CIFAR10-DVS split index (JSON with num_per_class and test lists)")
  try:
    with open(path) as f:
      split = json.load(f)
    n = int(split["num_per_class"])
    test = {c: set(int(i) for i in split["test"][c]) for c in CLASSES}
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(path, f"corrupt split index ({type(e).__name__}: {e}); expected JSON with "
                    "num_per_class and a test list for each of the ten classes") from None
  return n, test


LAYOUTS = ("aedat", "aedat4", "events_np", "frames")
_EXT = {"aedat": ".aedat", "aedat4": ".aedat4", "events_np": ".npz", "frames": ".npz"}
_CHECK = {"aedat": aedat.check_aedat2, "aedat4": aedat4.check_aedat4,
          "events_np": sj.check_events, "frames": sj.check_frames}
_TREES = ("[CIFAR10-DVS/]<class>/cifar10_<class>_<n>.aedat (original), [CIFAR10DVS/]<class>/"
          "*_<n>.aedat4 (tonic), events_np/<class>/*.npz or frames_number_<T>_split_by_<s>/"
          "<class>/*.npz (SpikingJelly)")


def _class_dir_with(root: str, ext: str) -> bool:
  folder = os.path.join(root, CLASSES[0])
  return os.path.isdir(folder) and any(e.name.endswith(ext) for e in os.scandir(folder))


def find_layout(data_dir: str, layout: str, num_frames: int, split_by: str
                ) -> tuple[str, str]:
  """``(layout, root)``: the root holds the ten class folders of that layout."""
  if layout not in ("auto",) + LAYOUTS:
    raise unknown_choice("data.layout for cifar10_dvs", layout, ("auto",) + LAYOUTS)
  candidates = {
      "aedat": [os.path.join(data_dir, "CIFAR10-DVS"), data_dir],
      "aedat4": [os.path.join(data_dir, "CIFAR10DVS"), data_dir],
      "events_np": [os.path.join(data_dir, sj.EVENTS_DIR)],
  }
  for name in LAYOUTS if layout == "auto" else (layout,):
    if name == "frames":
      if layout == "frames" or sj.has_frames(data_dir):
        return name, sj.find_frames_folder(data_dir, num_frames, split_by)
      continue
    for root in candidates[name]:
      if _class_dir_with(root, _EXT[name]):
        return name, root
  raise DataError(data_dir, f"no CIFAR10-DVS {'layout' if layout == 'auto' else layout} "
                  f"found; expected one of: {_TREES}")


def recording_files(root: str, layout: str) -> dict[str, dict[int, str]]:
  """``{class: {recording number: path}}`` of a layout's class folders."""
  pattern = re.compile(r"(?:^|_)(\d+)" + re.escape(_EXT[layout]) + "$")  # *_<n> or <n>
  out = {}
  for c in CLASSES:
    folder = require_path(os.path.join(root, c), f"the class folder {c}/ of the {layout} "
                          "layout", is_dir=True)
    files = {}
    for name in os.listdir(folder):
      m = pattern.search(name)
      if m:
        files[int(m.group(1))] = os.path.join(folder, name)
    out[c] = files
  return out


def read_events(layout: str, path: str) -> events.Events:
  """The recording's events in our sensor mapping (see module doc)."""
  if layout == "aedat":
    t, address = aedat.read_aedat2(path)
    xr, yr, pr = aedat.dvs128_address(address)
    return events.Events(t.astype(np.int64), SENSOR_SIZE - 1 - yr, SENSOR_SIZE - 1 - xr,
                         1 - pr)
  if layout == "aedat4":
    ev = aedat4.read_aedat4(path)
    return events.Events(ev.t, ev.y, ev.x, ev.p)  # DV stores our image transposed
  if layout == "events_np":
    return sj.read_events(path)
  raise ValueError(f"no events in layout {layout}")


def _decode_group(group: tuple[str, str]) -> dict[int, Any]:
  layout, path = group
  return {0: sj.read_frames(path) if layout == "frames" else read_events(layout, path)}


def frame_spec(config: Any, opts: Any) -> events.FrameSpec:
  return events.FrameSpec(int(config.num_steps), (SENSOR_SIZE, SENSOR_SIZE),
                          tuple(int(s) for s in opts.frame_size), int(opts.denoise_us),
                          int(opts.refractory_us))


def load_cifar10_dvs(config: Any) -> DatasetSplits:
  opts = data_options(config, "cifar10_dvs")
  spec = frame_spec(config, opts)
  layout, root = find_layout(config.data_dir, opts.layout, spec.num_frames, opts.sj_split_by)
  events.check_layout_supports(layout == "frames", opts, root)
  files = recording_files(root, layout)
  n, test = read_split(opts.split_file or PUBLISHED_SPLIT)
  train_samples, test_samples = [], []
  for label, c in enumerate(CLASSES):
    for i in range(n):
      if i not in files[c]:
        raise DataError(os.path.join(root, c), f"missing recording {i} of class {c} in the "
                        f"{layout} layout (the split lists 0..{n - 1})")
      path = files[c][i]
      sample = events.Sample((layout, path), 0, label, events.content_key([path], 0, spec),
                             path)
      (test_samples if i in test[c] else train_samples).append(sample)
  cache = events.make_cache(opts, config.data_dir, "cifar10_dvs")
  info = DatasetInfo(name="cifar10_dvs", num_classes=len(CLASSES),
                     input_shape=spec.size + (2,), static_input=False, frame_spec=spec)
  check = _CHECK[layout]
  return DatasetSplits(
      events.EventFrameSource(train_samples, _decode_group, spec, cache,
                              events_mode=bool(opts.time_jitter_us)),
      events.EventFrameSource(test_samples, _decode_group, spec, cache), info,
      [(s.name, check) for s in train_samples + test_samples])
