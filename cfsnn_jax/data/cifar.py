"""CIFAR-10 / CIFAR-100 from the original python tarballs or from a tfds data dir.

Contract: ``load_cifar10(config)`` / ``load_cifar100(config)`` -> ``DatasetSplits`` whose
examples are ``{"image": uint8 [32, 32, 3] (RGB, channel-last), "label": int32}``; 50 000
train / 10 000 test; CIFAR-100 uses the 100 fine labels. The float32 normalised batch comes
from the ``train_augment`` / ``eval_transform`` hooks in ``cfsnn_jax.data``.

``config.data.source`` picks the reader:
- ``tarball``: ``<data_dir>/cifar-10-python.tar.gz`` (members ``cifar-10-batches-py/
  data_batch_1..5`` and ``test_batch``) or ``<data_dir>/cifar-100-python.tar.gz`` (members
  ``cifar-100-python/train`` and ``test``), or the same folders already extracted. Each member
  is a pickled dict with ``data`` (``uint8 [N, 3072]``, the 1024 red, then green, then blue
  values of each row-major image) and ``labels`` / ``fine_labels``. Pickles are read with an
  unpickler that only accepts numpy arrays and builtins.
- ``tfds``: ``tfds.data_source('cifar10' | 'cifar100')`` over ``data_dir`` (local or cloud,
  ``array_record`` files; reading needs no TensorFlow; ``download=False``).
- ``auto`` (default): the tarball or folder when ``data_dir`` holds one, tfds otherwise.
"""

from __future__ import annotations

from cfsnn_jax.errors import UserError

import io
import os
import pickle
import tarfile
from typing import Any

import numpy as np

from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import (ArraySource, DataError, DatasetInfo, DatasetSplits,
                                    decoding, tfds_data_sources)

_LAYOUT = {
    "cifar10": dict(archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    label_key=b"labels", num_classes=10),
    "cifar100": dict(archive="cifar-100-python.tar.gz", folder="cifar-100-python",
                     train=["train"], test=["test"], label_key=b"fine_labels",
                     num_classes=100),
}

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays and builtins only (the CIFAR batches need nothing else)."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _SAFE_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _unpickle(data: bytes) -> dict:
  return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def _parse_batch(batch: Any, where: str, label_key: bytes, num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
    raise DataError(where, f"expected a pickled dict with b'data' and {label_key!r}")
  flat = np.asarray(batch[b"data"], dtype=np.uint8)
  labels = np.asarray(batch[label_key], dtype=np.int64)
  if flat.ndim != 2 or flat.shape[1] != 3072 or len(labels) != len(flat):
    raise DataError(where, f"expected data uint8 [N, 3072] and N labels, got data "
                    f"{flat.shape} and {labels.shape[0]} labels")
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise DataError(where, f"unknown label {int(bad[0])}; expected 0..{num_classes - 1}")
  images = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> HWC
  return np.ascontiguousarray(images), labels.astype(np.int32)


def read_python_batches(data_dir: str, name: str
                        ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Reads ``(train_images, train_labels), (test_images, test_labels)`` of the tarball."""
  lay = _LAYOUT[name]
  archive = os.path.join(data_dir, lay["archive"])
  folder = os.path.join(data_dir, lay["folder"])
  members = lay["train"] + lay["test"]
  raw: dict[str, bytes] = {}
  if os.path.isdir(folder):
    for m in members:
      path = os.path.join(folder, m)
      if not os.path.isfile(path):
        raise DataError(path, f"missing file; expected the {name} python batch {m!r}")
      with open(path, "rb") as f:
        raw[m] = f.read()
    where = {m: os.path.join(folder, m) for m in members}
  elif os.path.isfile(archive):
    with decoding(archive, f"the original {lay['archive']} (truncated or corrupt archive)"):
      with tarfile.open(archive, "r:gz") as tar:
        for m in members:
          try:
            f = tar.extractfile(f"{lay['folder']}/{m}")
          except KeyError:
            raise DataError(archive, f"member {lay['folder']}/{m} not found; expected the "
                            f"original {lay['archive']}") from None
          raw[m] = f.read()
    where = {m: f"{archive}:{lay['folder']}/{m}" for m in members}
  else:
    raise DataError(data_dir, f"no {lay['archive']} or {lay['folder']}/ here; expected the "
                    f"original python tarball (or a tfds data dir with data.source='tfds')")

  def parse(names):
    parts = []
    for m in names:
      with decoding(where[m], "a CIFAR python batch (truncated or corrupt pickle)"):
        batch = _unpickle(raw[m])
      parts.append(_parse_batch(batch, where[m], lay["label_key"], lay["num_classes"]))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  return parse(lay["train"]), parse(lay["test"])


class TfdsImageSource:
  """A ``tfds.data_source`` split seen as ``{"image": uint8 HWC, "label": int32}``."""

  def __init__(self, data_source: Any):
    self._ds = data_source

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self._ds[int(index)]
    return {"image": np.asarray(ex["image"], np.uint8), "label": np.int32(ex["label"])}


def _load(config: Any, name: str) -> DatasetSplits:
  opts = data_options(config, name)
  lay = _LAYOUT[name]
  info = DatasetInfo(name=name, num_classes=lay["num_classes"], input_shape=(32, 32, 3))
  data_dir = config.data_dir
  source = opts.source
  if source == "auto":
    local = data_dir and (os.path.isfile(os.path.join(data_dir, lay["archive"]))
                          or os.path.isdir(os.path.join(data_dir, lay["folder"])))
    source = "tarball" if local else "tfds"
  if source == "tarball":
    (xtr, ytr), (xte, yte) = read_python_batches(data_dir, name)
    return DatasetSplits(ArraySource(image=xtr, label=ytr), ArraySource(image=xte, label=yte),
                         info)
  if source == "tfds":
    train, test = tfds_data_sources(name, data_dir, ("train", "test"))
    return DatasetSplits(TfdsImageSource(train), TfdsImageSource(test), info)
  raise UserError(f"unknown data.source {source!r} for {name}; valid choices: auto, tarball, "
                   "tfds")


def load_cifar10(config: Any) -> DatasetSplits:
  return _load(config, "cifar10")


def load_cifar100(config: Any) -> DatasetSplits:
  return _load(config, "cifar100")
