"""Tiny datasets written in each source's real on-disk format (``config.data_dir = "fixture"``).

Contract: ``materialize(name, layout="auto")`` -> ``(directory, data_overrides)``: a folder
holding a small, deterministic (seeded) copy of dataset ``name`` in one on-disk layout its
loader reads (``FIXTURE_LAYOUTS``; ``auto`` = the original release: CIFAR python tarballs,
Tiny-ImageNet JPEG folders, AEDAT 2.0 / 3.1 recordings with label CSVs and trial lists,
event arrays, GLUE TSV, PTB trees; or AEDAT4 written by dv-processing, SpikingJelly's
``events_np`` / ``frames_number_*``, tonic's Gesture ``.npy``, the TactileSGNet release,
Tiny-ImageNet's val in class folders) and the ``config.data`` fields the fixture needs (its
own CIFAR10-DVS split index). Every layout of a dataset holds the same recordings (the same
seeded draws), so their frames must agree. Every fixture has at least 16 training and 8 test
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

FIXTURE_VERSION = 2
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


def write_tiny_imagenet(directory: str, rng: np.random.Generator, layout: str = "original"
                        ) -> dict:
  root = os.path.join(directory, "tiny-imagenet-200")
  wnids = ["n01443537", "n01629819", "n01641577", "n01644900"]
  with_folders = layout == "val_folders"
  os.makedirs(os.path.join(root, "val", "images") if not with_folders else
              os.path.join(root, "val"))
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
    folder = os.path.join(root, "val", wnids[i % 4], "images") if with_folders else \
        os.path.join(root, "val", "images")
    os.makedirs(folder, exist_ok=True)
    pil = Image.fromarray(img).convert("L") if i == 0 else Image.fromarray(img)  # one gray
    pil.save(os.path.join(folder, name), format="JPEG")
    lines.append(f"{name}\t{wnids[i % 4]}\t0\t0\t63\t63\n")
  if not with_folders:
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
      f.writelines(lines)
  return {}


def aedat2_bytes(x_raw, y_raw, p_raw, t_us) -> bytes:
  """An AEDAT 2.0 file: header, then big-endian (DVS128 address, timestamp) pairs."""
  addr = (np.asarray(y_raw) << 8) | (np.asarray(x_raw) << 1) | np.asarray(p_raw)
  words = np.stack([addr, np.asarray(t_us)], axis=1).astype(">u4")
  return b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n" + words.tobytes()


def moving_blob(rng: np.random.Generator, label: int, n: int, t0: int = 0,
                duration: int = 1_000_000, side: int = 24) -> tuple[np.ndarray, ...]:
  """``(x, y, p, t)`` of ``n`` events of a ``side``-pixel square drifting right across a
  128x128 sensor from a start that depends on ``label`` (dense enough that the resized frames
  of the :tiny configs make neurons fire)."""
  t = np.sort(rng.integers(t0, t0 + duration, n))
  cx = 20 + (label % 5) * 18 + 30 * (t - t0) / duration
  cy = 30 + (label // 5 % 2) * 60 + 0 * t
  x = np.clip(np.rint(cx + rng.uniform(-side / 2, side / 2, n)), 0, 127).astype(np.int64)
  y = np.clip(np.rint(cy + rng.uniform(-side / 2, side / 2, n)), 0, 127).astype(np.int64)
  return x, y, rng.integers(0, 2, n), t


def sj_frames_split_by_number(x, y, p, num_frames: int, h: int = 128, w: int = 128
                              ) -> np.ndarray:
  """SpikingJelly's ``split_by='number'`` integration written from its documented formula:
  ``j_l = floor(N / T) * j``, ``j_r = floor(N / T) * (j + 1)`` (``N`` for the last), frame
  ``[2, H, W]`` = event counts at ``(p, y, x)``."""
  n = len(x)
  d = n // num_frames
  out = np.zeros((num_frames, 2, h, w))
  for j in range(num_frames):
    lo, hi = d * j, (d * (j + 1) if j < num_frames - 1 else n)
    pos = np.asarray(p[lo:hi]).astype(int) * h * w + np.asarray(y[lo:hi]) * w + \
        np.asarray(x[lo:hi])
    out[j] = np.bincount(pos, minlength=2 * h * w).reshape(2, h, w)
  return out


SJ_FRAME_COUNTS = (2, 4)  # T of the SpikingJelly frames fixtures (the :tiny configs use 4)


def write_aedat4(path: str, x, y, p, t) -> None:
  """An AEDAT4 file written by iniVation's dv-processing (an independent writer)."""
  try:
    import dv_processing as dv
  except ImportError:
    from cfsnn_jax.errors import UserError
    raise UserError("writing the AEDAT4 fixture needs dv-processing: pip install "
                    "'cfsnn_jax[test]'") from None
  store = dv.EventStore()
  for ti, xi, yi, pi in zip(np.asarray(t).tolist(), np.asarray(x).tolist(),
                            np.asarray(y).tolist(), np.asarray(p).tolist()):
    store.push_back(int(ti), int(xi), int(yi), bool(pi))
  writer = dv.io.MonoCameraWriter(path, dv.io.MonoCameraWriter.EventOnlyConfig(
      "DVS128", (128, 128)))
  writer.writeEvents(store)
  del writer  # closes the file


def cifar10_dvs_recording(rng: np.random.Generator, label: int) -> tuple[np.ndarray, ...]:
  """Raw DVS128 ``(x_r, y_r, p_r, t)`` of one fixture recording."""
  return moving_blob(rng, label, 8000)


def write_cifar10_dvs(directory: str, rng: np.random.Generator, layout: str = "aedat") -> dict:
  """The same recordings in one layout (the cross-layout tests compare them)."""
  from cfsnn_jax.data.cifar10_dvs import CLASSES, make_split
  per_class = 3
  for k, c in enumerate(CLASSES):
    for i in range(per_class):
      xr, yr, pr, t = cifar10_dvs_recording(rng, k)
      name = f"cifar10_{c}_{i}"
      x, y, p = 127 - yr, 127 - xr, 1 - pr  # the image (SpikingJelly's mapping, ours)
      if layout == "aedat":
        path = os.path.join(directory, "CIFAR10-DVS", c, name + ".aedat")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
          f.write(aedat2_bytes(xr, yr, pr, t))
      elif layout == "aedat4":  # the DV converter's mapping: our image transposed
        path = os.path.join(directory, "CIFAR10DVS", c, name + ".aedat4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_aedat4(path, 127 - xr, 127 - yr, 1 - pr, t)
      elif layout == "events_np":
        path = os.path.join(directory, "events_np", c, name + ".npz")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez_compressed(path, t=t, x=x, y=y, p=p)
      elif layout == "frames":
        for num_frames in SJ_FRAME_COUNTS:
          path = os.path.join(directory, f"frames_number_{num_frames}_split_by_number", c,
                              name + ".npz")
          os.makedirs(os.path.dirname(path), exist_ok=True)
          np.savez_compressed(path, frames=sj_frames_split_by_number(x, y, p, num_frames))
      else:
        raise _unknown_layout("cifar10_dvs", layout)
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


GESTURE_TRIALS = {"train": [f"user{u:02d}_fluorescent" for u in (1, 2, 3, 4)],
                  "test": [f"user{u:02d}_led" for u in (24, 25)]}


def write_dvs_gesture(directory: str, rng: np.random.Generator, layout: str = "aedat") -> dict:
  """Six trials of four gestures (distinct classes within a trial) in one layout."""
  if layout not in ("aedat", "tonic", "events_np", "frames"):
    raise _unknown_layout("dvs_gesture", layout)
  root = os.path.join(directory, "DvsGesture")
  label = 0
  for split, names in GESTURE_TRIALS.items():
    for stem in names:
      rows, packets = [], []
      for g in range(4):
        start = 1_000_000 * (g + 1)
        cls = label % 11 + 1
        x, y, p, t = moving_blob(rng, cls - 1, 4000, t0=start, duration=500_000)
        packets.append(aedat31_polarity_packet(x, y, p, t))
        rows.append(f"{cls},{start},{start + 500_000}\n")
        label += 1
        if layout == "tonic":
          path = os.path.join(directory, "DVSGesture", "ibmGesture" + split.capitalize(),
                              stem, f"{cls - 1}.npy")
          os.makedirs(os.path.dirname(path), exist_ok=True)
          np.save(path, np.stack([x, y, p, t // 1000], axis=1).astype(np.int64))
        elif layout == "events_np":
          path = os.path.join(directory, "events_np", split, str(cls - 1), f"{stem}_0.npz")
          os.makedirs(os.path.dirname(path), exist_ok=True)
          np.savez_compressed(path, t=t, x=x, y=y, p=p)
        elif layout == "frames":
          for num_frames in SJ_FRAME_COUNTS:
            path = os.path.join(directory, f"frames_number_{num_frames}_split_by_number",
                                split, str(cls - 1), f"{stem}_0.npz")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.savez_compressed(path, frames=sj_frames_split_by_number(x, y, p, num_frames))
      if layout == "aedat":
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, stem + ".aedat"), "wb") as f:
          f.write(AEDAT31_HEADER + b"".join(packets))
        with open(os.path.join(root, stem + "_labels.csv"), "w") as f:
          f.write("class,startTime_usec,endTime_usec\n" + "".join(rows))
    if layout == "aedat":
      with open(os.path.join(root, f"trials_to_{split}.txt"), "w") as f:
        f.write("".join(s + ".aedat\n" for s in names))
  return {}


def write_evtouch(directory: str, rng: np.random.Generator, layout: str = "index") -> dict:
  """24 samples of 4 classes (class-dependent taxels): generic event arrays + samples.csv, or
  the TactileSGNet release (dense [39, 2, 250] 0/1 arrays; indices restart per folder)."""
  if layout not in ("index", "tactilesgnet"):
    raise _unknown_layout("evtouch", layout)
  rows = ["file,label,split\n"]
  counters = {"train": 0, "test": 0}
  for i in range(24):
    label, split = i % 4, ("train" if i < 16 else "test")
    n = 600
    taxel = np.clip(label * 9 + rng.integers(0, 12, n), 0, 38)
    t = np.sort(rng.integers(0, 10**6, n))
    p = rng.integers(0, 2, n)
    if layout == "index":
      os.makedirs(os.path.join(directory, "events"), exist_ok=True)
      np.savez(os.path.join(directory, "events", f"s{i:02d}.npz"), t=t, taxel=taxel, p=p)
      rows.append(f"events/s{i:02d}.npz,{label},{split}\n")
    else:
      dense = np.zeros((39, 2, 250), np.float32)
      dense[taxel, p, t * 250 // 10**6] = 1.0
      folder = os.path.join(directory, "Ev-Objects", split)
      os.makedirs(folder, exist_ok=True)
      np.save(os.path.join(folder, f"sample_{counters[split]}_label_{label}.npy"), dense)
      counters[split] += 1
  if layout == "index":
    with open(os.path.join(directory, "samples.csv"), "w") as f:
      f.writelines(rows)
  return {}


def _unknown_layout(name: str, layout: str):
  from cfsnn_jax.errors import unknown_choice
  return unknown_choice(f"fixture layout of {name}", layout, FIXTURE_LAYOUTS[name])


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
    "cifar10": lambda d, r, layout: write_cifar(d, "cifar10", r),
    "cifar100": lambda d, r, layout: write_cifar(d, "cifar100", r),
    "tiny_imagenet": write_tiny_imagenet,
    "cifar10_dvs": write_cifar10_dvs,
    "dvs_gesture": write_dvs_gesture,
    "evtouch": write_evtouch,
    "sst2": lambda d, r, layout: write_sst2(d, r),
    "sst5": lambda d, r, layout: write_sst5(d, r),
}
# the layouts each fixture can be written in; the first is the original release (``auto``)
FIXTURE_LAYOUTS = {
    "cifar10": ("tarball",), "cifar100": ("tarball",), "sst2": ("tsv",), "sst5": ("trees",),
    "tiny_imagenet": ("original", "val_folders"),
    "cifar10_dvs": ("aedat", "aedat4", "events_np", "frames"),
    "dvs_gesture": ("aedat", "tonic", "events_np", "frames"),
    "evtouch": ("index", "tactilesgnet"),
}


def materialize(name: str, root: str | None = None, layout: str = "auto"
                ) -> tuple[str, dict]:
  """Writes (once) and returns the fixture folder of ``name`` in ``layout`` (``auto``: the
  original release) and its data overrides."""
  if name not in WRITERS:
    raise ValueError(f"no fixture for dataset {name!r}; fixtures exist for "
                     f"{', '.join(sorted(WRITERS))}")
  layout = FIXTURE_LAYOUTS[name][0] if layout == "auto" else layout
  if layout not in FIXTURE_LAYOUTS[name]:
    raise _unknown_layout(name, layout)
  root = root or os.path.join(tempfile.gettempdir(), "cfsnn_jax_fixtures")
  final = os.path.join(root, f"{name}-{layout}-v{FIXTURE_VERSION}")
  overrides_file = os.path.join(final, "overrides.json")
  if not os.path.isfile(overrides_file):
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-")
    try:
      overrides = WRITERS[name](tmp, np.random.default_rng(0), layout)
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
