"""Tiny datasets written in each source's real on-disk format (``config.data_dir = "fixture"``).

Contract: ``materialize(name)`` -> ``(directory, data_overrides)``: a folder holding a small,
deterministic (seeded) copy of dataset ``name`` in the layout its loader reads (CIFAR python
tarballs, Tiny-ImageNet JPEG folders, AEDAT 2.0 / 3.1 recordings with label CSVs and trial
lists, event arrays, GLUE TSV, PTB trees) and the ``config.data`` fields the fixture needs
(its own CIFAR10-DVS split index). Every fixture has at least 16 training and 8 test
examples. The folder lives under ``$TMPDIR/cfsnn_jax_fixtures``; it is built in a temporary
folder and renamed into place, so concurrent processes agree and never see half a fixture.
The ``:tiny`` configs and the data tests use it; it is never a benchmark.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import tarfile
import tempfile

import numpy as np
from PIL import Image

FIXTURE_VERSION = 1
WORDS = ("a", "the", "film", "movie", "charming", "dull", "moving", "awful", "great", "plot",
         "is", "not", "very", "and", ",", ".")


def _smooth_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  coarse = rng.integers(0, 256, (n, size // 4, size // 4, 3)).astype(np.uint8)
  return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)


def write_cifar(directory: str, name: str, rng: np.random.Generator) -> dict:
  ten = name == "cifar10"
  folder = "cifar-10-batches-py" if ten else "cifar-100-python"
  label_key = b"labels" if ten else b"fine_labels"
  k = 10 if ten else 100
  members = {}
  train_names = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
  per = 20 // len(train_names)
  for i, m in enumerate(train_names + ["test_batch" if ten else "test"]):
    n = 10 if i == len(train_names) else per
    images = _smooth_images(rng, n, 32)
    members[m] = {b"data": images.transpose(0, 3, 1, 2).reshape(n, 3072),
                  label_key: [int(v) for v in rng.integers(0, k, n)]}
  archive = os.path.join(directory, "cifar-10-python.tar.gz" if ten else
                         "cifar-100-python.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    for m, obj in members.items():
      blob = pickle.dumps(obj, protocol=2)
      info = tarfile.TarInfo(f"{folder}/{m}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return {}


def write_tiny_imagenet(directory: str, rng: np.random.Generator) -> dict:
  root = os.path.join(directory, "tiny-imagenet-200")
  wnids = ["n01443537", "n01629819", "n01641577", "n01644900"]
  os.makedirs(os.path.join(root, "val", "images"))
  with open(os.path.join(root, "wnids.txt"), "w") as f:
    f.write("\n".join(wnids) + "\n")
  for w in wnids:
    folder = os.path.join(root, "train", w, "images")
    os.makedirs(folder)
    for i, img in enumerate(_smooth_images(rng, 4, 64)):
      Image.fromarray(img).save(os.path.join(folder, f"{w}_{i}.JPEG"), format="JPEG")
  lines = []
  for i, img in enumerate(_smooth_images(rng, 8, 64)):
    name = f"val_{i}.JPEG"
    pil = Image.fromarray(img).convert("L") if i == 0 else Image.fromarray(img)  # one gray
    pil.save(os.path.join(root, "val", "images", name), format="JPEG")
    lines.append(f"{name}\t{wnids[i % 4]}\t0\t0\t63\t63\n")
  with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
    f.writelines(lines)
  return {}


def aedat2_bytes(x_raw, y_raw, p_raw, t_us) -> bytes:
  """An AEDAT 2.0 file: header, then big-endian (DVS128 address, timestamp) pairs."""
  addr = (np.asarray(y_raw) << 8) | (np.asarray(x_raw) << 1) | np.asarray(p_raw)
  words = np.stack([addr, np.asarray(t_us)], axis=1).astype(">u4")
  return b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n" + words.tobytes()


def write_cifar10_dvs(directory: str, rng: np.random.Generator) -> dict:
  from cfsnn_jax.data.cifar10_dvs import CLASSES, make_split
  root = os.path.join(directory, "CIFAR10-DVS")
  per_class = 3
  for c in CLASSES:
    os.makedirs(os.path.join(root, c))
    for i in range(per_class):
      n = 300
      blob = aedat2_bytes(rng.integers(0, 128, n), rng.integers(0, 128, n),
                          rng.integers(0, 2, n), np.sort(rng.integers(0, 10**6, n)))
      with open(os.path.join(root, c, f"cifar10_{c}_{i}.aedat"), "wb") as f:
        f.write(blob)
  split_file = os.path.join(directory, "split.json")
  with open(split_file, "w") as f:
    json.dump(make_split(per_class, seed=0, test_fraction=1 / 3), f)
  return {"split_file": split_file}


AEDAT31_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"


def aedat31_polarity_packet(x, y, p, t_us, valid=None, ts_overflow: int = 0) -> bytes:
  """One AEDAT 3.1 polarity packet (28-byte little-endian header + 8-byte events)."""
  valid = np.ones(len(x), np.int64) if valid is None else np.asarray(valid)
  data = ((np.asarray(x) << 17) | (np.asarray(y) << 2) | (np.asarray(p) << 1) | valid)
  body = np.stack([data, np.asarray(t_us)], axis=1).astype("<u4").tobytes()
  n = len(x)
  return struct.pack("<hhiiiiii", 1, 1, 8, 4, ts_overflow, n, n, int(valid.sum())) + body


def write_dvs_gesture(directory: str, rng: np.random.Generator) -> dict:
  root = os.path.join(directory, "DvsGesture")
  os.makedirs(root)
  trials = {"train": [f"user{u:02d}_fluorescent" for u in (1, 2, 3, 4)],
            "test": [f"user{u:02d}_led" for u in (24, 25)]}
  label = 0
  for split, names in trials.items():
    for stem in names:
      rows, packets = [], []
      for g in range(4):
        start = 1_000_000 * (g + 1)
        n = 400
        t = np.sort(rng.integers(start, start + 500_000, n))
        packets.append(aedat31_polarity_packet(rng.integers(0, 128, n), rng.integers(0, 128, n),
                                               rng.integers(0, 2, n), t))
        rows.append(f"{label % 11 + 1},{start},{start + 500_000}\n")
        label += 1
      with open(os.path.join(root, stem + ".aedat"), "wb") as f:
        f.write(AEDAT31_HEADER + b"".join(packets))
      with open(os.path.join(root, stem + "_labels.csv"), "w") as f:
        f.write("class,startTime_usec,endTime_usec\n" + "".join(rows))
    with open(os.path.join(root, f"trials_to_{split}.txt"), "w") as f:
      f.write("".join(s + ".aedat\n" for s in names))
  return {}


def write_evtouch(directory: str, rng: np.random.Generator) -> dict:
  os.makedirs(os.path.join(directory, "events"))
  rows = ["file,label,split\n"]
  for i in range(24):
    n = 150
    np.savez(os.path.join(directory, "events", f"s{i:02d}.npz"),
             t=np.sort(rng.integers(0, 10**6, n)), taxel=rng.integers(0, 39, n),
             p=rng.integers(0, 2, n))
    rows.append(f"events/s{i:02d}.npz,{i % 4},{'train' if i < 16 else 'test'}\n")
  with open(os.path.join(directory, "samples.csv"), "w") as f:
    f.writelines(rows)
  return {}


def _sentence(rng: np.random.Generator) -> list[str]:
  return [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(3, 12)))]


def write_sst2(directory: str, rng: np.random.Generator) -> dict:
  os.makedirs(os.path.join(directory, "SST-2"))
  for split, n in (("train", 16), ("dev", 8)):
    with open(os.path.join(directory, "SST-2", f"{split}.tsv"), "w") as f:
      f.write("sentence\tlabel\n")
      for i in range(n):
        f.write(" ".join(_sentence(rng)) + f" \t{i % 2}\n")
  return {}


def _tree(words: list[str], label: int) -> str:
  inner = " ".join(f"(2 {w})" for w in words)
  return f"({label} {inner})"


def write_sst5(directory: str, rng: np.random.Generator) -> dict:
  os.makedirs(os.path.join(directory, "trees"))
  for split, n in (("train", 16), ("dev", 8), ("test", 8)):
    with open(os.path.join(directory, "trees", f"{split}.txt"), "w") as f:
      for i in range(n):
        f.write(_tree(_sentence(rng), i % 5) + "\n")
  return {}


WRITERS = {
    "cifar10": lambda d, r: write_cifar(d, "cifar10", r),
    "cifar100": lambda d, r: write_cifar(d, "cifar100", r),
    "tiny_imagenet": write_tiny_imagenet,
    "cifar10_dvs": write_cifar10_dvs,
    "dvs_gesture": write_dvs_gesture,
    "evtouch": write_evtouch,
    "sst2": write_sst2,
    "sst5": write_sst5,
}


def materialize(name: str, root: str | None = None) -> tuple[str, dict]:
  """Writes (once) and returns the fixture folder of ``name`` and its data overrides."""
  if name not in WRITERS:
    raise ValueError(f"no fixture for dataset {name!r}; fixtures exist for "
                     f"{', '.join(sorted(WRITERS))}")
  root = root or os.path.join(tempfile.gettempdir(), "cfsnn_jax_fixtures")
  final = os.path.join(root, f"{name}-v{FIXTURE_VERSION}")
  overrides_file = os.path.join(final, "overrides.json")
  if not os.path.isfile(overrides_file):
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-")
    try:
      overrides = WRITERS[name](tmp, np.random.default_rng(0))
      # paths inside the fixture are written relative to the temporary folder
      overrides = {k: v.replace(tmp, final) if isinstance(v, str) else v
                   for k, v in overrides.items()}
      with open(os.path.join(tmp, "overrides.json"), "w") as f:
        json.dump(overrides, f)
      os.rename(tmp, final)
    except OSError:
      if not os.path.isfile(overrides_file):  # not a lost race with another process
        raise
    finally:
      if os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
  with open(overrides_file) as f:
    return final, json.load(f)
