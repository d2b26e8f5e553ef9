"""Tiny-ImageNet-200 (the paper's ImageNet-200) from the original ``tiny-imagenet-200/`` layout.

Contract: ``load_tiny_imagenet(config)`` -> ``DatasetSplits`` of
``{"image": uint8 [64, 64, 3] RGB, "label": int32}``, decoded lazily from the JPEG files
(grayscale JPEGs are converted to RGB by channel replication). Layout under
``config.data_dir`` (or ``config.data_dir/tiny-imagenet-200``)::

  wnids.txt                          the 200 class ids (one WordNet id per line)
  train/<wnid>/images/*.JPEG         training images (500 per class)
  val/images/*.JPEG                  the 10 000 validation images = our test split
  val/val_annotations.txt            <file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1> per line

``config.data.layout``: ``original`` (above), or ``val_folders``: ``val/`` re-organised into
class folders, ``val/<wnid>/images/*.JPEG`` or ``val/<wnid>/*.JPEG`` (label = the folder;
a ``val_annotations.txt`` left beside them must agree with the folder of every file it
lists); ``auto`` (default): ``original`` when ``val/images/`` exists, else ``val_folders``.

Label ``k`` is the position of the wnid in ``sorted(wnids)`` (the torchvision ImageFolder
order). The unlabelled ``test/`` folder is not used. A wnid in ``val_annotations.txt`` that is
not in ``wnids.txt``, a missing folder or an unreadable JPEG is one ``DataError`` line.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
from PIL import Image

from cfsnn_jax.data.options import data_options
from cfsnn_jax.errors import unknown_choice
from cfsnn_jax.data.sources import (DataError, DatasetInfo, DatasetSplits, IndexedSource,
                                    decoding, read_text, require_path)

IMAGE_SIZE = 64


def find_root(data_dir: str) -> str:
  nested = os.path.join(data_dir, "tiny-imagenet-200")
  root = nested if os.path.isdir(nested) else data_dir
  require_path(os.path.join(root, "wnids.txt"),
               "tiny-imagenet-200/wnids.txt (the original Tiny-ImageNet-200 layout)")
  return root


def read_image(path: str) -> np.ndarray:
  """``uint8 [64, 64, 3]`` RGB of one JPEG (grayscale replicated to three channels)."""
  with decoding(path, "a 64x64 JPEG"):
    with Image.open(path) as img:
      rgb = np.asarray(img.convert("RGB"), np.uint8)
  if rgb.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
    raise DataError(path, f"image of shape {rgb.shape}, expected (64, 64, 3)")
  return rgb


JPEG_END = b"\xff\xd9"  # end-of-image marker
JPEG_TAIL = 1024  # the marker must lie in the last KB (some writers append a few bytes)


def check_image(path: str) -> None:
  """Header (format, 64x64) and end-of-image marker of one JPEG, without decoding it."""
  require_path(path, "a 64x64 JPEG")
  with decoding(path, "a 64x64 JPEG"):
    with Image.open(path) as img:
      size, fmt = img.size, img.format
  if size != (IMAGE_SIZE, IMAGE_SIZE):
    raise DataError(path, f"image of size {size[0]}x{size[1]}, expected 64x64")
  if fmt == "JPEG":
    with open(path, "rb") as f:
      f.seek(max(0, os.path.getsize(path) - JPEG_TAIL))
      if JPEG_END not in f.read():
        raise DataError(path, "no JPEG end-of-image marker: truncated; expected a whole "
                        "64x64 JPEG")


def _read_example(paths: np.ndarray, labels: np.ndarray, index: int) -> dict[str, Any]:
  return {"image": read_image(str(paths[index])), "label": labels[index]}


def _source(paths: list[str], labels: list[int]) -> IndexedSource:
  return IndexedSource(len(paths), functools.partial(
      _read_example, np.asarray(paths), np.asarray(labels, np.int32)))


LAYOUTS = ("original", "val_folders")


def _jpegs(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpeg", ".jpg")))


def find_layout(root: str, layout: str) -> str:
  if layout not in ("auto",) + LAYOUTS:
    raise unknown_choice("data.layout for tiny_imagenet", layout, ("auto",) + LAYOUTS)
  if layout != "auto":
    return layout
  return "original" if os.path.isdir(os.path.join(root, "val", "images")) else "val_folders"


def _annotations(root: str, index: dict[str, int], classes: list[str], required: bool
                 ) -> list[tuple[str, int]] | None:
  """``[(file, label)]`` of ``val/val_annotations.txt`` (None when absent and optional)."""
  ann = os.path.join(root, "val", "val_annotations.txt")
  if not required and not os.path.isfile(ann):
    return None
  require_path(ann, "val/val_annotations.txt (file, wnid, box per line)")
  text = read_text(ann, "val_annotations.txt lines <file>\\t<wnid>\\t<box>")
  rows = []
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    fields = line.rstrip("\n").split("\t")
    if len(fields) < 2:
      raise DataError(ann, f"line {n}: expected '<file>\\t<wnid>\\t...', got {line[:60]!r}")
    if fields[1] not in index:
      raise DataError(ann, f"line {n}: unknown label {fields[1]!r}; expected one of the "
                      f"{len(classes)} wnids in wnids.txt")
    rows.append((fields[0], index[fields[1]]))
  return rows


def _val_folders(root: str, index: dict[str, int], classes: list[str]
                 ) -> tuple[list[str], list[int]]:
  val = require_path(os.path.join(root, "val"), "the val/ folder", is_dir=True)
  paths, labels = [], []
  for name in sorted(os.listdir(val)):
    folder = os.path.join(val, name)
    if not os.path.isdir(folder):
      continue
    if name not in index:
      raise DataError(folder, f"unknown label folder {name!r}; expected val/<wnid>/ for a "
                      "wnid of wnids.txt")
    inner = os.path.join(folder, "images")
    folder = inner if os.path.isdir(inner) else folder
    for f in _jpegs(folder):
      paths.append(os.path.join(folder, f))
      labels.append(index[name])
  if not paths:
    raise DataError(val, "no JPEG in val/<wnid>/ or val/<wnid>/images/; expected the "
                    "validation images sorted into class folders")
  listed = _annotations(root, index, classes, required=False)
  if listed is not None:
    by_file = dict(listed)
    for p, lab in zip(paths, labels):
      name = os.path.basename(p)
      if name in by_file and by_file[name] != lab:
        raise DataError(p, f"in the folder of {classes[lab]} but val_annotations.txt says "
                        f"{classes[by_file[name]]}; expected the folder to match")
  return paths, labels


def list_files(root: str, layout: str = "original"
               ) -> tuple[list[str], list[str], tuple[list[str], list[int]],
                          tuple[list[str], list[int]]]:
  """``(wnids, sorted_wnids, (train_paths, train_labels), (val_paths, val_labels))``."""
  text = read_text(os.path.join(root, "wnids.txt"), "the class ids, one WordNet id per line")
  wnids = [w.strip() for w in text.splitlines() if w.strip()]
  classes = sorted(set(wnids))
  index = {w: k for k, w in enumerate(classes)}
  train_paths, train_labels = [], []
  for w in classes:
    folder = require_path(os.path.join(root, "train", w, "images"),
                          f"the training images of class {w}", is_dir=True)
    names = _jpegs(folder)
    if not names:
      raise DataError(folder, "no JPEG files; expected the training images of class " + w)
    train_paths += [os.path.join(folder, n) for n in names]
    train_labels += [index[w]] * len(names)
  if layout == "val_folders":
    return wnids, classes, (train_paths, train_labels), _val_folders(root, index, classes)
  rows = _annotations(root, index, classes, required=True)
  val_paths = [os.path.join(root, "val", "images", f) for f, _ in rows]
  val_labels = [lab for _, lab in rows]
  for p in (val_paths[0], val_paths[-1]) if val_paths else ():
    require_path(p, "a validation image listed in val/val_annotations.txt")
  return wnids, classes, (train_paths, train_labels), (val_paths, val_labels)


def load_tiny_imagenet(config: Any) -> DatasetSplits:
  opts = data_options(config, "tiny_imagenet")
  root = find_root(config.data_dir)
  _, classes, train, val = list_files(root, find_layout(root, opts.layout))
  info = DatasetInfo(name="tiny_imagenet", num_classes=len(classes),
                     input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
  files = [(p, check_image) for p in train[0] + val[0]]
  return DatasetSplits(_source(*train), _source(*val), info, files)
