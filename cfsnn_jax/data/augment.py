"""Per-example training augmentation and evaluation transforms (numpy + PIL).

Contract: every transform is a picklable callable on one example ``{"image", "label"}``.
- ``ImageAugment(...)(example, rng)``: ``uint8 [H, W, C]`` in, ``float32 [H, W, C]`` out, in
  this order: random crop after zero padding (``crop_padding`` pixels each side, offset uniform
  in ``[0, 2 * padding]``), horizontal flip (p = 0.5), AutoAugment CIFAR-10 policy
  (``autoaugment.py``), scaling to [0, 1] and per-channel ``(x - mean) / std``, then Cutout
  (one ``cutout_length`` square, centre uniform over the image, clipped at the border, set to
  0 = the mean after normalisation; DeVries & Taylor 2017). Every stage can be switched off.
- ``Normalize(mean, std)(example)``: the deterministic evaluation half (uint8 -> float32).
- ``EventAugment(flip, max_shift, translate, time_roll, time_jitter_us, spec)(example,
  rng)``: ``float32 [T, H, W, 2]`` frames, in this order: horizontal flip (p = 0.5), a
  translation by integers uniform in ``[-max_shift, max_shift]`` along H and W, circular
  (``translate='roll'``, ``np.roll`` as TET's CIFAR10-DVS code) or filling zeros
  (``'pad'``: a random crop of the frames zero-padded by ``max_shift``), then a temporal
  roll of the frame axis by an integer uniform in ``[-time_roll, time_roll]``; all frames
  share one draw. With ``time_jitter_us > 0`` the example holds events (``t, x, y, p``; the
  source's events mode) that are jittered (``event_filters.time_jitter``) and binned by
  ``spec`` (``events.FrameSpec``) before the frame transforms.
All randomness comes from the per-example ``np.random.Generator`` the pipeline passes in.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cfsnn_jax.data import autoaugment
from cfsnn_jax.errors import UserError, unknown_choice


class Normalize:
  """``uint8 [H, W, C]`` -> ``float32 (x / 255 - mean) / std`` (mean 0 / std 1 if None)."""

  def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    self.scale = np.float32(1.0 / 255.0)
    self.mean = np.zeros((), np.float32) if mean is None else np.asarray(mean, np.float32)
    self.inv_std = (np.ones((), np.float32) if std is None
                    else (1.0 / np.asarray(std, np.float32)).astype(np.float32))

  def image(self, image_HWC: np.ndarray) -> np.ndarray:
    x = image_HWC.astype(np.float32) * self.scale
    return (x - self.mean) * self.inv_std

  def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
    return {**example, "image": self.image(example["image"])}


class ImageAugment:
  """Crop (zero padding) -> flip -> AutoAugment -> normalise -> Cutout; see module doc."""

  def __init__(self, *, crop_padding: int = 4, flip: bool = True, autoaugment: bool = False,
               autoaugment_fill: int = 128, cutout_length: int = 0,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    if crop_padding < 0 or cutout_length < 0:
      raise UserError(f"crop_padding and cutout_length must be >= 0, got {crop_padding}, "
                       f"{cutout_length}")
    self.crop_padding = int(crop_padding)
    self.flip = bool(flip)
    self.autoaugment = bool(autoaugment)
    self.autoaugment_fill = int(autoaugment_fill)
    self.cutout_length = int(cutout_length)
    self.normalize = Normalize(mean, std)

  def image(self, image_HWC: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image_HWC.shape[:2]
    x = image_HWC
    if self.crop_padding:
      p = self.crop_padding
      dy, dx = rng.integers(0, 2 * p + 1, size=2)
      padded = np.zeros((h + 2 * p, w + 2 * p) + x.shape[2:], x.dtype)
      padded[p:p + h, p:p + w] = x
      x = padded[dy:dy + h, dx:dx + w]
    if self.flip and rng.random() < 0.5:
      x = x[:, ::-1]
    if self.autoaugment:
      x = autoaugment.cifar10_policy(np.ascontiguousarray(x), rng, self.autoaugment_fill)
    out = self.normalize.image(x)
    if self.cutout_length:
      cy, cx = rng.integers(0, h), rng.integers(0, w)
      half = self.cutout_length // 2
      out[max(cy - half, 0):cy - half + self.cutout_length,
          max(cx - half, 0):cx - half + self.cutout_length] = 0.0
    return out

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {**example, "image": self.image(example["image"], rng)}


class EventAugment:
  """Training augmentation of event examples (see module doc), on the CPU workers."""

  def __init__(self, *, flip: bool = True, max_shift: int = 0, translate: str = "roll",
               time_roll: int = 0, time_jitter_us: float = 0.0, spec: Any = None):
    if max_shift < 0 or time_roll < 0 or time_jitter_us < 0:
      raise UserError(f"data.max_shift, data.time_roll and data.time_jitter_us must be >= 0, "
                      f"got {max_shift}, {time_roll}, {time_jitter_us}")
    if translate not in TRANSLATE_MODES:
      raise unknown_choice("data.translate", translate, TRANSLATE_MODES)
    if time_jitter_us and spec is None:
      raise ValueError("time jitter bins the events per example: pass the FrameSpec")
    self.flip = bool(flip)
    self.max_shift = int(max_shift)
    self.translate = translate
    self.time_roll = int(time_roll)
    self.time_jitter_us = float(time_jitter_us)
    self.spec = spec

  def frames(self, frames_THWC: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = frames_THWC
    if self.flip and rng.random() < 0.5:
      x = x[:, :, ::-1]
    if self.max_shift:
      dy, dx = (int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
      x = np.roll(x, (dy, dx), axis=(1, 2)) if self.translate == "roll" else \
          shift_with_zeros(x, dy, dx)
    if self.time_roll:
      x = np.roll(x, int(rng.integers(-self.time_roll, self.time_roll + 1)), axis=0)
    return np.ascontiguousarray(x, dtype=np.float32)

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if "image" not in example:  # events mode: jitter, then bin this example's events
      from cfsnn_jax.data import event_filters
      from cfsnn_jax.data.events import Events
      ev = Events(example["t"], example["x"], example["y"], example["p"])
      ev = event_filters.time_jitter(ev, self.time_jitter_us, rng)
      image = self.spec.frames(ev, "an augmented example")
      return {"image": self.frames(image, rng), "label": example["label"]}
    return {**example, "image": self.frames(example["image"], rng)}


TRANSLATE_MODES = ("roll", "pad")


def shift_with_zeros(frames_THWC: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """``out[:, y, x] = in[:, y - dy, x - dx]``, zero where that falls outside (a random crop
  of the zero-padded frames)."""
  t, h, w = frames_THWC.shape[:3]
  out = np.zeros_like(frames_THWC)
  ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
  xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
  out[:, yd, xd] = frames_THWC[:, ys, xs]
  return out
