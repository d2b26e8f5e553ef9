"""Filters and jitter on event streams (numpy, vectorised; tonic's functional semantics).

Contract: every function takes ``events.Events`` in stream order and returns ``Events``.
- ``refractory(ev, period_us, sensor)``: drops an event when the previous event of the same
  pixel (kept or dropped) is at most ``period_us`` earlier: kept iff ``t - t_prev > period``
  (the first event of a pixel is kept). Same rule as tonic's ``refractory_period_numpy``.
- ``denoise(ev, filter_us, sensor)``: keeps an event iff one of its 4 neighbours (left,
  right, up, down; not itself, not diagonals) had an earlier event in the stream less than
  ``filter_us`` before it (``t - t_neighbour < filter_us``). tonic's ``denoise_numpy`` rule,
  except that tonic also treats every pixel as having fired at t = 0 (so it keeps every event
  before ``filter_us``); here a pixel that never fired supports nothing.
- ``time_jitter(ev, std_us, rng)``: adds ``round(N(0, std_us))`` to every timestamp, then
  re-sorts by time (stable). tonic's ``time_jitter_numpy`` with ``sort_timestamps=True``.
Written here because tonic's versions loop over events in Python (seconds for one DVS128
Gesture sample) and tonic pulls librosa, h5py and rosbag readers in as dependencies.
"""

from __future__ import annotations

import numpy as np

# ``Events`` in annotations is ``cfsnn_jax.data.events.Events``; not imported, because
# events.py imports this module (results are built with ``type(ev)(...)``).


def _pixel(ev: Events, sensor: tuple[int, int]) -> np.ndarray:
  return np.asarray(ev.y, np.int64) * int(sensor[1]) + np.asarray(ev.x, np.int64)


def _previous_at(pixel_e: np.ndarray, query_pixel: np.ndarray, t_e: np.ndarray,
                 valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """For each event i: the time of the latest event j < i at ``query_pixel[i]``, and whether
  one exists (events in stream order)."""
  n = len(pixel_e)
  order = np.lexsort((np.arange(n), pixel_e))  # by pixel, then stream position
  sorted_key = pixel_e[order] * n + order
  query_key = query_pixel * n + np.arange(n)
  pos = np.searchsorted(sorted_key, query_key, side="left") - 1
  pos_c = np.clip(pos, 0, max(n - 1, 0))
  found = valid & (pos >= 0) & (pixel_e[order][pos_c] == query_pixel)
  return t_e[order][pos_c], found


def refractory(ev: Events, period_us: float, sensor: tuple[int, int]) -> Events:
  if len(ev) == 0 or period_us <= 0:
    return ev
  pix = _pixel(ev, sensor)
  t = np.asarray(ev.t, np.int64)
  t_prev, found = _previous_at(pix, pix, t, np.ones(len(ev), bool))
  return ev.select(~found | (t - t_prev > period_us))


def denoise(ev: Events, filter_us: float, sensor: tuple[int, int]) -> Events:
  if len(ev) == 0 or filter_us <= 0:
    return ev
  h, w = int(sensor[0]), int(sensor[1])
  x = np.asarray(ev.x, np.int64)
  y = np.asarray(ev.y, np.int64)
  t = np.asarray(ev.t, np.int64)
  pix = y * w + x
  keep = np.zeros(len(ev), bool)
  for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
    nx, ny = x + dx, y + dy
    inside = (nx >= 0) & (nx < w) & (ny >= 0) & (ny < h)
    t_n, found = _previous_at(pix, ny * w + nx, t, inside)
    keep |= found & (t - t_n < filter_us)
  return ev.select(keep)


def time_jitter(ev: Events, std_us: float, rng: np.random.Generator) -> Events:
  if len(ev) == 0 or std_us <= 0:
    return ev
  t = np.asarray(ev.t, np.int64) + np.rint(rng.normal(0.0, std_us, len(ev))).astype(np.int64)
  order = np.argsort(t, kind="stable")
  return type(ev)(t[order], np.asarray(ev.x)[order], np.asarray(ev.y)[order],
                np.asarray(ev.p)[order])
