"""Dataset registry: ``load_dataset(config)`` picks the loader by ``config.dataset``.

Each source lives in its own module and returns ``sources.DatasetSplits``; the shared grain
pipeline is ``pipeline``. Unknown names fail with one line naming the valid choices.
"""

from __future__ import annotations

from typing import Any, Callable

from cfsnn_jax.data import embedded
from cfsnn_jax.data.sources import DatasetSplits

DATASETS: dict[str, Callable[[Any], DatasetSplits]] = {
    "digits": embedded.load_digits,
    "mnist5k": embedded.load_mnist5k,
}


def validate_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(sorted(DATASETS))}")


def train_augment(config: Any, info: Any):
  """Per-example training augmentation ``(example, np_rng) -> example`` or None."""
  return None


def eval_transform(config: Any, info: Any):
  """Per-example deterministic evaluation transform or None."""
  return None


def load_dataset(config: Any) -> DatasetSplits:
  validate_dataset_name(config.dataset)
  return DATASETS[config.dataset](config)
