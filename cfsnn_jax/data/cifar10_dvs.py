"""CIFAR10-DVS from the original per-class AEDAT 2.0 recordings, with our published split.

Contract: ``load_cifar10_dvs(config)`` -> ``DatasetSplits`` of ``{"image": float32 [T, H, W,
2], "label": int32}`` with ``T = config.num_steps`` and ``(H, W) = config.data.frame_size``
(default 48x48); ``DatasetInfo(static_input=False, input_shape=(H, W, 2))``. Layout under
``config.data_dir`` (or ``config.data_dir/CIFAR10-DVS``): the ten unzipped class archives,
``<class>/cifar10_<class>_<n>.aedat`` for ``n`` in ``0..999``, classes in the CIFAR-10 order
below (label = position).

Decoding (the common SpikingJelly preprocessing, so frames match published pipelines): DVS128
addresses (``aedat.dvs128_address``) give raw ``(x_r, y_r, p_r)``; the sensor image is
``x = 127 - y_r``, ``y = 127 - x_r``, ``p = 1 - p_r``. Events -> T frames by event count on
the 128x128 sensor (``events.events_to_frames``), then resized (``events.resize_frames``) and
cached on disk.

Split (no official one exists): ``data/splits/cifar10_dvs_split.json`` lists the test
recordings of each class. Rule (``make_split``): labels ``[0]*1000 + [1]*1000 + ...`` in the
class order; ``sources.stratified_split(labels, 0.1, seed=0)`` (one
``np.random.default_rng(0)``, per class in order a permutation, its first 100 go to test);
recording number = index within the class. 900 train / 100 test per class. Train = every
number below ``num_per_class`` not listed as test.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np

from cfsnn_jax.data import aedat, events
from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import (DataError, DatasetInfo, DatasetSplits, require_path,
                                    stratified_split)

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


def find_root(data_dir: str) -> str:
  nested = os.path.join(data_dir, "CIFAR10-DVS")
  root = nested if os.path.isdir(nested) else data_dir
  require_path(os.path.join(root, CLASSES[0]),
               "the unzipped CIFAR10-DVS class folders airplane/ ... truck/ with "
               "cifar10_<class>_<n>.aedat", is_dir=True)
  return root


def decode_recording(path: str, num_frames: int) -> np.ndarray:
  """``float32 [T, 128, 128, 2]`` event counts of one CIFAR10-DVS recording."""
  t, address = aedat.read_aedat2(path)
  xr, yr, pr = aedat.dvs128_address(address)
  ev = events.Events(t.astype(np.int64), SENSOR_SIZE - 1 - yr, SENSOR_SIZE - 1 - xr, 1 - pr)
  return events.events_to_frames(ev, num_frames, SENSOR_SIZE, SENSOR_SIZE)


def _decode_group(group: tuple[str, str], num_frames: int, size: tuple[int, int]
                  ) -> dict[str, np.ndarray]:
  path, key = group
  return {key: events.resize_frames(decode_recording(path, num_frames), size)}


def load_cifar10_dvs(config: Any) -> DatasetSplits:
  opts = data_options(config, "cifar10_dvs")
  size = tuple(int(s) for s in opts.frame_size)
  num_frames = int(config.num_steps)
  root = find_root(config.data_dir)
  n, test = read_split(opts.split_file or PUBLISHED_SPLIT)
  train_samples, test_samples = [], []
  for label, c in enumerate(CLASSES):
    for i in range(n):
      path = os.path.join(root, c, f"cifar10_{c}_{i}.aedat")
      require_path(path, f"recording {i} of class {c} (the split lists 0..{n - 1})")
      sample = ((path, f"{c}_{i}"), f"{c}_{i}", label)
      (test_samples if i in test[c] else train_samples).append(sample)
  cache = events.make_cache(opts, config.data_dir, "cifar10_dvs", num_frames, size)
  decode = functools.partial(_decode_group, num_frames=num_frames, size=size)
  shape = (num_frames,) + size + (2,)
  info = DatasetInfo(name="cifar10_dvs", num_classes=len(CLASSES), input_shape=size + (2,),
                     static_input=False)
  files = [(s[0][0], aedat.check_aedat2) for s in train_samples + test_samples]
  return DatasetSplits(events.EventFrameSource(train_samples, decode, shape, cache),
                       events.EventFrameSource(test_samples, decode, shape, cache), info,
                       files)
