"""AutoAugment, CIFAR-10 policy (Cubuk et al., CVPR 2019), in numpy + PIL.

Contract: ``cifar10_policy(image_HWC, rng, fill=128) -> image_HWC`` takes and returns a
``uint8 [H, W, 3]`` array. It draws one of the 25 sub-policies uniformly; each of its two
operations is applied with its own probability, at its magnitude bin ``m`` in ``0..9`` of the
table below (the magnitudes of torchvision's ``AutoAugmentPolicy.CIFAR10``, 10 bins). Shear,
translate, rotate and the enhance ops (colour, contrast, brightness, sharpness, factor
``1 + v``) get a random sign. The point ops (invert, posterize, solarize, autocontrast,
equalize) run as numpy look-up tables equal to PIL's ImageOps (tested). Geometric ops use
nearest-neighbour resampling and fill the uncovered pixels with grey ``fill`` (as the
CIFAR10Policy used by TET). All randomness comes from ``rng`` (a ``np.random.Generator``),
so the result is a function of the seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

NUM_BINS = 10

# (op, probability, magnitude bin) pairs; None where the op has no magnitude.
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Color",
                        "Contrast", "Brightness", "Sharpness"})


def magnitudes(op: str, width: int) -> np.ndarray:
  """The 10 magnitude bins of ``op`` for images ``width`` pixels wide."""
  if op in ("ShearX", "ShearY"):
    return np.linspace(0.0, 0.3, NUM_BINS)
  if op in ("TranslateX", "TranslateY"):
    return np.linspace(0.0, 150.0 / 331.0 * width, NUM_BINS)
  if op == "Rotate":
    return np.linspace(0.0, 30.0, NUM_BINS)
  if op in ("Color", "Contrast", "Brightness", "Sharpness"):
    return np.linspace(0.0, 0.9, NUM_BINS)
  if op == "Posterize":
    return 8 - np.round(np.arange(NUM_BINS) / ((NUM_BINS - 1) / 4)).astype(int)
  if op == "Solarize":
    return np.linspace(255.0, 0.0, NUM_BINS)
  raise ValueError(f"AutoAugment op {op!r} has no magnitude")


def _equalize(x: np.ndarray) -> np.ndarray:
  """PIL's ``ImageOps.equalize`` per channel, as a numpy look-up table."""
  out = np.empty_like(x)
  for c in range(x.shape[-1]):
    hist = np.bincount(x[..., c].ravel(), minlength=256)
    nonzero = hist[hist > 0]
    step = (int(nonzero.sum()) - int(nonzero[-1])) // 255 if len(nonzero) > 1 else 0
    if not step:
      out[..., c] = x[..., c]
      continue
    lut = (step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])) // step
    out[..., c] = np.minimum(lut, 255).astype(np.uint8)[x[..., c]]
  return out


def _autocontrast(x: np.ndarray) -> np.ndarray:
  """PIL's ``ImageOps.autocontrast`` (no cutoff) per channel, in numpy."""
  out = np.empty_like(x)
  for c in range(x.shape[-1]):
    lo, hi = int(x[..., c].min()), int(x[..., c].max())
    if hi <= lo:
      out[..., c] = x[..., c]
      continue
    scale = 255.0 / (hi - lo)
    lut = (np.arange(256) * scale - lo * scale).astype(np.int64)
    out[..., c] = np.clip(lut, 0, 255).astype(np.uint8)[x[..., c]]
  return out


def apply_array_op(x: np.ndarray, op: str, v: float) -> np.ndarray | None:
  """The point operations in numpy (same values as PIL's ImageOps); None for other ops."""
  if op == "Invert":
    return 255 - x
  if op == "Posterize":
    return x & np.uint8((0xFF << (8 - int(v))) & 0xFF)
  if op == "Solarize":
    return np.where(x >= v, 255 - x, x)
  if op == "AutoContrast":
    return _autocontrast(x)
  if op == "Equalize":
    return _equalize(x)
  return None


def apply_op(img: Image.Image, op: str, v: float, fill: int) -> Image.Image:
  """One AutoAugment operation at (signed) magnitude ``v`` on a PIL RGB image (reference)."""
  fillcolor = (fill,) * len(img.getbands())
  if op == "ShearX":
    return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0), Image.NEAREST,
                         fillcolor=fillcolor)
  if op == "ShearY":
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0), Image.NEAREST,
                         fillcolor=fillcolor)
  if op == "TranslateX":
    return img.transform(img.size, Image.AFFINE, (1, 0, int(v), 0, 1, 0), Image.NEAREST,
                         fillcolor=fillcolor)
  if op == "TranslateY":
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, int(v)), Image.NEAREST,
                         fillcolor=fillcolor)
  if op == "Rotate":
    return img.rotate(v, resample=Image.NEAREST, fillcolor=fillcolor)
  if op == "Color":
    return ImageEnhance.Color(img).enhance(1.0 + v)
  if op == "Contrast":
    return ImageEnhance.Contrast(img).enhance(1.0 + v)
  if op == "Brightness":
    return ImageEnhance.Brightness(img).enhance(1.0 + v)
  if op == "Sharpness":
    return ImageEnhance.Sharpness(img).enhance(1.0 + v)
  if op == "Posterize":
    return ImageOps.posterize(img, int(v))
  if op == "Solarize":
    return ImageOps.solarize(img, v)
  if op == "AutoContrast":
    return ImageOps.autocontrast(img)
  if op == "Equalize":
    return ImageOps.equalize(img)
  if op == "Invert":
    return ImageOps.invert(img)
  raise ValueError(f"unknown AutoAugment op {op!r}")


def cifar10_policy(image_HWC: np.ndarray, rng: np.random.Generator, fill: int = 128
                   ) -> np.ndarray:
  """Applies one randomly chosen CIFAR-10 sub-policy to a ``uint8 [H, W, 3]`` image."""
  sub_policy = CIFAR10_POLICY[int(rng.integers(len(CIFAR10_POLICY)))]
  draws = rng.random(4)  # (apply?, sign) for each of the two ops; always 4 draws
  x, img = image_HWC, None  # the current image lives in one of the two
  for k, (op, prob, bin_) in enumerate(sub_policy):
    if draws[2 * k] >= prob:
      continue
    v = 0.0
    if bin_ is not None:
      v = float(magnitudes(op, image_HWC.shape[1])[bin_])
      if op in SIGNED_OPS and draws[2 * k + 1] < 0.5:
        v = -v
    if x is None:
      x = np.asarray(img, dtype=np.uint8)
    y = apply_array_op(x, op, v)
    if y is not None:
      x, img = y, None
    else:
      img, x = apply_op(img if img is not None else Image.fromarray(x), op, v, fill), None
  return x if x is not None else np.asarray(img, dtype=np.uint8)
