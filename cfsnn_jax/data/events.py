"""Events -> T frames, the content-keyed frame cache, and the lazy source of event datasets.

Contract:
- ``Events(t, x, y, p)``: aligned 1-D arrays in stream (time) order; ``t`` in microseconds,
  ``x`` column, ``y`` row, ``p`` polarity in {0, 1}.
- ``events_to_frames(events, num_frames, height, width)`` -> ``float32 [T, H, W, 2]`` event
  counts, split by event count (SpikingJelly's ``split_by='number'``): with ``N`` events and
  ``d = N // T``, frame ``i < T - 1`` holds events ``[i*d, (i+1)*d)`` and the last frame holds
  ``[(T-1)*d, N)`` (the remainder; all events when ``N < T``). Channel ``c`` counts the events
  of polarity ``c`` (0 = OFF, 1 = ON), channel-last.
- ``resize_frames(frames_THWC, (h, w))``: antialiased bilinear resize of every (frame,
  channel) plane in float32 (PIL ``BILINEAR``, as torchvision's ``Resize``); identity when the
  size already matches.
- ``FrameSpec(num_frames, sensor, size, denoise_us, refractory_us)``: how a sample becomes
  frames (filters of ``event_filters``, then the binning, then the resize; pre-binned
  frames are only resized). Its ``settings()`` enter the cache key.
- ``content_key(paths, sample, spec)``: SHA-256 of every source file's absolute path, size
  and mtime, the sample's id inside them and the spec: two sources never share a key; a
  replaced source or a changed setting gets a new one.
- ``FrameCache(dir)``: one ``<key[:2]>/<key>.npy`` per sample; a write goes to a temporary
  file in the same directory that is renamed over the final name (``os.replace``), so a
  reader never sees a half-written file, whatever the number of threads or processes.
- ``EventFrameSource(samples, decode_group, spec, cache, events_mode)``: a random-access
  source of ``{"image": float32 [T, h, w, 2], "label": int32}`` over ``Sample(group,
  sample_id, label, key, name)``s; on a cache miss ``decode_group(group)`` returns the
  events (or pre-binned frames) of every sample of that group (one recording file may hold
  several samples) and all of them are cached, so each file is decoded once. With
  ``events_mode`` it returns the filtered events ``{"t", "x", "y", "p", "label"}`` instead
  (training with time jitter; ``augment.EventAugment`` bins them per example).
- ``read_event_array(path)``: the generic event-array format (``.npz`` with arrays ``t``,
  ``p`` and ``x``/``y`` or ``taxel``; or a ``.csv`` with those columns) as ``Events``
  sorted by time (stable); ``check_event_array`` its header-only check.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from cfsnn_jax.data import event_filters, sources
from cfsnn_jax.data.sources import DataError, decoding, read_text, require_path

CACHE_FORMAT_VERSION = 2  # bump when the binning / resize rule or the key changes


@dataclasses.dataclass(frozen=True)
class Events:
  t: np.ndarray
  x: np.ndarray
  y: np.ndarray
  p: np.ndarray

  def __len__(self) -> int:
    return len(self.t)

  def select(self, mask_or_index: np.ndarray) -> "Events":
    return Events(self.t[mask_or_index], self.x[mask_or_index], self.y[mask_or_index],
                  self.p[mask_or_index])


def frame_boundaries(num_events: int, num_frames: int) -> np.ndarray:
  """``[T + 1]`` event indices: frame ``i`` holds events ``[b[i], b[i + 1])``."""
  d = num_events // num_frames
  bounds = np.arange(num_frames + 1, dtype=np.int64) * d
  bounds[-1] = num_events
  return bounds


def events_to_frames(events: Events, num_frames: int, height: int, width: int) -> np.ndarray:
  """Event counts ``float32 [T, H, W, 2]`` split by event count (see module doc)."""
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  n = len(events)
  x = np.asarray(events.x, np.int64)
  y = np.asarray(events.y, np.int64)
  p = np.asarray(events.p, np.int64)
  if n and (x.min() < 0 or x.max() >= width or y.min() < 0 or y.max() >= height):
    raise ValueError(f"event coordinates outside the {width}x{height} sensor (x in "
                     f"[{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}])")
  if n and (p.min() < 0 or p.max() > 1):
    raise ValueError(f"polarity must be 0 or 1, got values in [{p.min()}, {p.max()}]")
  bounds = frame_boundaries(n, num_frames)
  frame = np.searchsorted(bounds, np.arange(n), side="right") - 1
  flat = ((frame * height + y) * width + x) * 2 + p
  counts = np.bincount(flat, minlength=num_frames * height * width * 2)
  return counts.astype(np.float32).reshape(num_frames, height, width, 2)


def resize_frames(frames_THWC: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Bilinear (antialiased) resize of ``[T, H, W, C]`` frames to ``size = (h, w)``."""
  h, w = int(size[0]), int(size[1])
  t, fh, fw, c = frames_THWC.shape
  if (fh, fw) == (h, w):
    return frames_THWC.astype(np.float32, copy=False)
  out = np.empty((t, h, w, c), np.float32)
  for i in range(t):
    for k in range(c):
      plane = Image.fromarray(np.ascontiguousarray(frames_THWC[i, :, :, k], np.float32), "F")
      out[i, :, :, k] = np.asarray(plane.resize((w, h), Image.BILINEAR))
  return out


NPY_LOCK = sources.NPY_LOCK  # see sources.NPY_LOCK


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  """Writes ``array`` to ``path`` through a temporary file renamed into place."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npy")
  try:
    with os.fdopen(fd, "wb") as f:
      np.save(f, array)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


@dataclasses.dataclass(frozen=True)
class FrameSpec:
  """How one sample's events become ``float32 [T, h, w, 2]`` frames (the cache's settings)."""
  num_frames: int
  sensor: tuple[int, int]  # (H, W) of the events' coordinates
  size: tuple[int, int]  # (h, w) after the resize
  denoise_us: int = 0  # event_filters.denoise window (0: off)
  refractory_us: int = 0  # event_filters.refractory period (0: off)

  def settings(self) -> dict[str, Any]:
    return {"rule": f"count-v{CACHE_FORMAT_VERSION}", **dataclasses.asdict(self)}

  def filter(self, ev: Events) -> Events:
    if self.refractory_us:
      ev = event_filters.refractory(ev, self.refractory_us, self.sensor)
    if self.denoise_us:
      ev = event_filters.denoise(ev, self.denoise_us, self.sensor)
    return ev

  def frames(self, decoded: "Events | np.ndarray", where: str) -> np.ndarray:
    """Frames of one decoded sample: events are filtered and binned; frames already binned
    on the sensor (pre-binned layouts) are only resized."""
    if isinstance(decoded, Events):
      try:
        frames = events_to_frames(self.filter(decoded), self.num_frames, *self.sensor)
      except ValueError as e:
        raise DataError(where, f"{e}; expected events of a {self.sensor[1]}x"
                        f"{self.sensor[0]} sensor") from None
    else:
      frames = decoded
      want = (self.num_frames,) + tuple(self.sensor) + (2,)
      if frames.shape != want:
        raise DataError(where, f"frames of shape {frames.shape}, expected {want}")
    return resize_frames(frames.astype(np.float32, copy=False), self.size)


def check_layout_supports(pre_binned: bool, opts: Any, where: str) -> None:
  """Pre-binned frames cannot be filtered or jittered: refuse those settings in one line."""
  if not pre_binned:
    return
  on = [k for k in ("denoise_us", "refractory_us", "time_jitter_us") if opts.get(k)]
  if on:
    from cfsnn_jax.errors import UserError
    raise UserError(f"{where} holds pre-binned frames; data.{on[0]} needs events (set it to 0 "
                    "or point data_dir at an event layout)")


def file_identity(path: str) -> list:
  """``[absolute path, size, mtime_ns]`` of a source file (what a cache key depends on)."""
  st = os.stat(path)
  return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def content_key(paths: Sequence[str], sample: Any, spec: FrameSpec) -> str:
  """The cache key of one sample: a hash of every source file's path, size and mtime, the
  sample's id inside them (a segment, an index) and the binning settings."""
  blob = json.dumps({"files": [file_identity(p) for p in paths], "sample": sample,
                     "frames": spec.settings()}, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:40]


class FrameCache:
  """Frames on disk, one ``<key>.npy`` per sample, written atomically."""

  def __init__(self, directory: str):
    self.directory = directory

  def path(self, key: str) -> str:
    return os.path.join(self.directory, key[:2], key + ".npy")

  def load(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    path = self.path(key)
    if not os.path.isfile(path):
      return None
    try:
      with NPY_LOCK:
        frames = np.load(path)
    except (OSError, ValueError, EOFError):  # damaged outside our atomic writes: decode again
      return None
    return frames if frames.shape == shape else None

  def save(self, key: str, frames: np.ndarray) -> None:
    try:
      atomic_save_npy(self.path(key), frames)
    except OSError as e:
      raise DataError(self.directory, f"cannot write the frame cache ({e.strerror}); set "
                      "config.data.cache_dir to a writable directory") from None


def make_cache(opts: Any, data_dir: str, dataset: str) -> FrameCache | None:
  """The frame cache chosen by ``opts.cache`` / ``opts.cache_dir`` (None when off); one
  folder per dataset, entries keyed by ``content_key``."""
  if not opts.cache:
    return None
  root = opts.cache_dir or os.path.join(data_dir, "frames_cache")
  return FrameCache(os.path.join(root, f"{dataset}-v{CACHE_FORMAT_VERSION}"))


@dataclasses.dataclass(frozen=True)
class Sample:
  group: Any  # what decode_group reads (hashable, picklable): a file and what it holds
  sample_id: Any  # the sample inside the group's decoded dict
  label: int
  key: str  # content_key of the sample
  name: str  # a readable name (file / segment) for errors and tests


class EventFrameSource:
  """Lazy, cached ``{"image": float32 [T, h, w, 2], "label": int32}`` source.

  ``events_mode=True`` (training with event-stream augmentation): ``{"t", "x", "y", "p":
  the filtered events, "label"}`` instead, binned per example by ``augment.EventAugment``.
  """

  def __init__(self, samples: Sequence[Sample],
               decode_group: Callable[[Any], dict[Any, "Events | np.ndarray"]],
               spec: FrameSpec, cache: FrameCache | None, events_mode: bool = False):
    self.samples = list(samples)
    self.decode_group = decode_group
    self.spec = spec
    self.frame_shape = (spec.num_frames,) + tuple(spec.size) + (2,)
    self.cache = cache
    self.events_mode = events_mode
    self._keys = {(s.group, s.sample_id): s.key for s in self.samples}

  def __len__(self) -> int:
    return len(self.samples)

  def _decoded(self, s: Sample) -> dict[Any, Any]:
    decoded = self.decode_group(s.group)
    if s.sample_id not in decoded:
      raise DataError(s.name, f"decoding gave no sample {s.sample_id!r}")
    return decoded

  def frames(self, index: int) -> np.ndarray:
    s = self.samples[index]
    if self.cache is not None:
      hit = self.cache.load(s.key, self.frame_shape)
      if hit is not None:
        return hit
    decoded = self._decoded(s)
    if self.cache is None:
      return self.spec.frames(decoded[s.sample_id], s.name)
    out = None
    for sid, value in decoded.items():
      key = self._keys.get((s.group, sid))
      if key is None:
        continue  # a sample of this file that the split does not use
      frames = self.spec.frames(value, s.name)
      self.cache.save(key, frames)
      if sid == s.sample_id:
        out = frames
    return out

  def events(self, index: int) -> Events:
    s = self.samples[index]
    value = self._decoded(s)[s.sample_id]
    if not isinstance(value, Events):
      raise DataError(s.name, "event-stream augmentation needs events; this layout holds "
                      "pre-binned frames (set data.time_jitter_us = 0 or use an event layout)")
    return self.spec.filter(value)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    label = np.int32(self.samples[index].label)
    if self.events_mode:
      ev = self.events(index)
      return {"t": ev.t, "x": ev.x, "y": ev.y, "p": ev.p, "label": label}
    return {"image": self.frames(index), "label": label}

  def fill_cache(self, num_threads: int = 2) -> None:
    """Decodes every not-yet-cached sample now (otherwise the first epoch does it)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(num_threads) as pool:
      list(pool.map(self.frames, range(len(self))))


EVENT_ARRAY = "an event array (.npz or .csv with columns t, p and taxel or x, y)"


def _event_columns(path: str, names: Sequence[str]) -> None:
  if "taxel" not in names and not {"x", "y"} <= set(names) or not {"t", "p"} <= set(names):
    raise DataError(path, f"columns {sorted(names)}; expected t, p and taxel (or x, y)")


def check_event_array(path: str) -> None:
  """Header-only check of an event array: the npz members' headers (same length, the
  needed columns) or the CSV header line."""
  from cfsnn_jax.data import verify
  if path.endswith(".npz"):
    members = verify.npz_members(path)
    _event_columns(path, list(members))
    lengths = {m[0][:1] for m in members.values()}
    if len(lengths) != 1:
      raise DataError(path, f"arrays of different lengths {sorted(lengths)}; expected one "
                      "entry per event in each")
  elif path.endswith(".csv"):
    require_path(path, EVENT_ARRAY)
    with open(path, "rb") as f:
      first = f.readline(4096)
    with decoding(path, EVENT_ARRAY):
      header = [h.strip() for h in first.decode("utf-8-sig").split(",")]
    _event_columns(path, header)
  else:
    raise DataError(path, "unknown event-array extension; expected .npz or .csv")


def read_event_array(path: str) -> Events:
  """Reads the generic event-array format (see module doc), sorted by time."""
  if not os.path.isfile(path):
    raise DataError(path, "missing file; expected an event array (.npz or .csv with columns "
                    "t, p and taxel or x, y)")
  expected = EVENT_ARRAY
  if path.endswith(".npz"):
    with decoding(path, expected):
      with NPY_LOCK, np.load(path, allow_pickle=False) as z:
        cols = {k: np.asarray(z[k]) for k in z.files}
  elif path.endswith(".csv"):
    rows = list(csv.reader(read_text(path, expected).splitlines()))
    header = [h.strip() for h in rows[0]] if rows else []
    with decoding(path, expected):
      body = np.asarray(rows[1:], dtype=np.float64).reshape(-1, len(header))
    cols = {h: body[:, i] for i, h in enumerate(header)}
  else:
    raise DataError(path, "unknown event-array extension; expected .npz or .csv")
  if "taxel" in cols:
    cols.setdefault("y", cols["taxel"])
    cols.setdefault("x", np.zeros_like(cols["taxel"]))
  missing = [k for k in ("t", "x", "y", "p") if k not in cols]
  if missing:
    raise DataError(path, f"missing columns {missing}; expected t, p and taxel (or x, y), "
                    f"found {sorted(cols)}")
  n = {len(cols[k]) for k in ("t", "x", "y", "p")}
  if len(n) != 1:
    raise DataError(path, "columns t, x, y, p differ in length")
  order = np.argsort(np.asarray(cols["t"]), kind="stable")
  return Events(np.asarray(cols["t"], np.int64)[order], np.asarray(cols["x"], np.int64)[order],
                np.asarray(cols["y"], np.int64)[order], np.asarray(cols["p"], np.int64)[order])
