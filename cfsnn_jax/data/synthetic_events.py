"""``mnist_dvs_synthetic``: event data simulated from the embedded MNIST images (no download).

Contract: ``load_mnist_dvs_synthetic(config)`` -> ``DatasetSplits`` of ``{"image": float32
[T, H, W, 2], "label": int32}`` (``T = config.num_steps``, ``(H, W) = frame_size``, default
34x34 like N-MNIST), ``DatasetInfo(static_input=False, synthetic=True)``: a stand-in that runs
the whole event pipeline, never a benchmark. Same 4000 / 1000 stratified split as
``mnist5k``. Events are generated on access, deterministically (no randomness).

Simulated sensor (``simulate_events``): the 28x28 digit, centred on the ``H x W`` canvas,
moves along three saccades (N-MNIST style) through the offsets ``(dy, dx)`` = (0, 0) ->
(s/2, s) -> (s, 0) -> (0, 0), ``s = saccade_pixels``, each leg in ``steps_per_saccade``
sub-steps (bilinear sub-pixel shift, zero outside). Each pixel keeps a reference
log-intensity ``log(0.1 + I)`` (I in [0, 1]) set at the start; at every sub-step ``k`` a pixel
whose log-intensity differs from its reference by ``d`` emits ``floor(|d| / C)`` events of
polarity ``d > 0`` at time ``k`` ms and moves its reference by that many ``C`` (the DVS
contrast-threshold model, ``C = contrast_threshold``). Events at one time are in raster order.
The path returns to its start, so every pixel emits as many ON as OFF events.
"""

from __future__ import annotations

from cfsnn_jax.errors import UserError

import functools
from typing import Any

import numpy as np

from cfsnn_jax.data import embedded, events
from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import DatasetInfo, DatasetSplits, IndexedSource, stratified_split

LOG_EPS = 0.1
STEP_US = 1000


def _shift(canvas_HW: np.ndarray, dy: float, dx: float) -> np.ndarray:
  """Bilinear translation by ``(dy, dx)`` pixels: ``out[y, x] = in(y - dy, x - dx)``."""
  h, w = canvas_HW.shape
  padded = np.pad(canvas_HW, 1)
  iy, ix = int(np.floor(dy)), int(np.floor(dx))
  fy, fx = dy - iy, dx - ix
  ys = np.arange(h)[:, None] - iy + 1  # row in padded of the sample at floor
  xs = np.arange(w)[None, :] - ix + 1

  def at(yy, xx):
    ok = (yy >= 0) & (yy < h + 2) & (xx >= 0) & (xx < w + 2)
    return np.where(ok, padded[np.clip(yy, 0, h + 1), np.clip(xx, 0, w + 1)], 0.0)

  return ((1 - fy) * (1 - fx) * at(ys, xs) + (1 - fy) * fx * at(ys, xs - 1)
          + fy * (1 - fx) * at(ys - 1, xs) + fy * fx * at(ys - 1, xs - 1))


def saccade_offsets(saccade_pixels: float, steps_per_saccade: int) -> np.ndarray:
  """``[3 * steps + 1, 2]`` offsets ``(dy, dx)`` along the closed 3-saccade path."""
  s = float(saccade_pixels)
  corners = np.array([[0.0, 0.0], [s / 2, s], [s, 0.0], [0.0, 0.0]])
  path = [corners[0]]
  for a, b in zip(corners[:-1], corners[1:]):
    for k in range(1, steps_per_saccade + 1):
      path.append(a + (b - a) * k / steps_per_saccade)
  return np.asarray(path)


def simulate_events(image_HW: np.ndarray, frame_size: tuple[int, int],
                    contrast_threshold: float, steps_per_saccade: int,
                    saccade_pixels: float) -> events.Events:
  """DVS events of the digit moving along the saccade path (see module doc)."""
  h, w = frame_size
  ih, iw = image_HW.shape
  canvas = np.zeros((h, w), np.float64)
  oy, ox = (h - ih) // 2, (w - iw) // 2
  canvas[oy:oy + ih, ox:ox + iw] = image_HW.astype(np.float64) / 255.0
  offsets = saccade_offsets(saccade_pixels, steps_per_saccade)
  ref = np.log(LOG_EPS + _shift(canvas, *offsets[0]))
  ts, pix, pol = [], [], []
  for k, (dy, dx) in enumerate(offsets[1:], 1):
    diff = np.log(LOG_EPS + _shift(canvas, dy, dx)) - ref
    n = np.floor(np.abs(diff) / contrast_threshold + 1e-9).astype(np.int64).ravel()
    ref = ref + (np.sign(diff) * n.reshape(h, w)) * contrast_threshold
    idx = np.repeat(np.arange(h * w), n)
    ts.append(np.full(idx.shape, k * STEP_US, np.int64))
    pix.append(idx)
    pol.append((diff.ravel() > 0).astype(np.int64)[idx])
  idx = np.concatenate(pix)
  return events.Events(np.concatenate(ts), idx % w, idx // w, np.concatenate(pol))


def _example(images: np.ndarray, labels: np.ndarray, index: int, *, num_frames: int,
             frame_size: tuple[int, int], contrast_threshold: float, steps_per_saccade: int,
             saccade_pixels: float) -> dict[str, Any]:
  ev = simulate_events(images[index], frame_size, contrast_threshold, steps_per_saccade,
                       saccade_pixels)
  return {"image": events.events_to_frames(ev, num_frames, *frame_size),
          "label": labels[index]}


def load_mnist_dvs_synthetic(config: Any) -> DatasetSplits:
  opts = data_options(config, "mnist_dvs_synthetic")
  size = tuple(int(s) for s in opts.frame_size)
  if size[0] < 28 or size[1] < 28:
    raise UserError(f"mnist_dvs_synthetic frame_size {size} is smaller than the 28x28 digit")
  x, y = embedded.mnist5k_arrays()
  tr, te = stratified_split(y, embedded.TEST_FRACTION, embedded.SPLIT_SEED)
  make = functools.partial(
      _example, num_frames=int(config.num_steps), frame_size=size,
      contrast_threshold=float(opts.contrast_threshold),
      steps_per_saccade=int(opts.steps_per_saccade), saccade_pixels=float(opts.saccade_pixels))
  info = DatasetInfo(name="mnist_dvs_synthetic", num_classes=10, input_shape=size + (2,),
                     static_input=False, synthetic=True)
  return DatasetSplits(IndexedSource(len(tr), functools.partial(make, x[tr], y[tr])),
                       IndexedSource(len(te), functools.partial(make, x[te], y[te])), info)
