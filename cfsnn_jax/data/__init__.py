"""Dataset registry: ``load_dataset(config)`` picks the loader by ``config.dataset``.

Each source lives in its own module and returns ``sources.DatasetSplits``; the shared grain
pipeline is ``pipeline``. Unknown names fail with one line naming the valid choices.

Per-dataset options live in ``config.data`` (``default_data_config(name)`` lists them; an empty
section means the defaults). The hooks turn raw examples into the batch contract:
- ``train_augment(config, info)`` -> ``(example, rng) -> example`` or None: for the uint8
  image datasets (cifar10, cifar100, tiny_imagenet) crop / flip / AutoAugment / normalise /
  Cutout (``augment.ImageAugment``), always producing normalised ``float32 [H, W, C]``; for
  the recorded event datasets the frame flip / translation / temporal roll and the event time
  jitter (``augment.EventAugment``) when enabled; ``options.EVENT_RECIPES`` names recipes.
- ``eval_transform(config, info)`` -> ``example -> example`` or None: the normalisation alone
  for the uint8 image datasets; None for everything else (already float32 / int32 ids).

``config.data_dir = "fixture"`` loads a tiny seeded copy of the dataset written in its real
on-disk format (``fixtures.py``) through the same loader: the ``:tiny`` configs run on it.
"""

from __future__ import annotations

from cfsnn_jax.errors import UserError

from typing import Any, Callable

import ml_collections

from cfsnn_jax.data import (augment, cifar, cifar10_dvs, dvs_gesture, embedded, evtouch,
                            fixtures, sst, synthetic_events, tiny_imagenet, verify)
from cfsnn_jax.data.options import data_options, default_data_config, event_augment_recipe
from cfsnn_jax.data.sources import DataError, DatasetInfo, DatasetSplits

__all__ = ["DATASETS", "DataError", "EvalBatches", "default_data_config", "data_options",
           "eval_transform", "event_augment_recipe", "load_dataset", "train_augment",
           "train_iterator", "validate_dataset_name"]
_PIPELINE = ("EvalBatches", "train_iterator")  # loaded at first use: grain stays unloaded


def __getattr__(name):
  if name in _PIPELINE:
    from cfsnn_jax.data import pipeline
    return getattr(pipeline, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

DATASETS: dict[str, Callable[[Any], DatasetSplits]] = {
    "digits": embedded.load_digits,
    "mnist5k": embedded.load_mnist5k,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "tiny_imagenet": tiny_imagenet.load_tiny_imagenet,
    "cifar10_dvs": cifar10_dvs.load_cifar10_dvs,
    "dvs_gesture": dvs_gesture.load_dvs_gesture,
    "evtouch": evtouch.load_evtouch,
    "sst2": sst.load_sst2,
    "sst5": sst.load_sst5,
    "mnist_dvs_synthetic": synthetic_events.load_mnist_dvs_synthetic,
}

UINT8_IMAGE_DATASETS = ("cifar10", "cifar100", "tiny_imagenet")
RECORDED_EVENT_DATASETS = ("cifar10_dvs", "dvs_gesture", "evtouch")


def validate_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise UserError(f"unknown dataset {name!r}; valid choices: {', '.join(sorted(DATASETS))}")


def _normalize(opts: ml_collections.ConfigDict) -> augment.Normalize:
  return augment.Normalize(opts.mean, opts.std) if opts.normalize else augment.Normalize()


def train_augment(config: Any, info: DatasetInfo):
  """Per-example training augmentation ``(example, np_rng) -> example`` or None."""
  name = info.name
  if name in UINT8_IMAGE_DATASETS:
    opts = data_options(config, name)
    return augment.ImageAugment(
        crop_padding=opts.crop_padding if opts.crop else 0, flip=opts.flip,
        autoaugment=opts.autoaugment, autoaugment_fill=opts.autoaugment_fill,
        cutout_length=opts.cutout_length if opts.cutout else 0,
        mean=opts.mean if opts.normalize else None, std=opts.std if opts.normalize else None)
  if name in RECORDED_EVENT_DATASETS:
    opts = data_options(config, name)
    if opts.flip or opts.max_shift or opts.time_roll or opts.time_jitter_us:
      return augment.EventAugment(flip=opts.flip, max_shift=opts.max_shift,
                                  translate=opts.translate, time_roll=opts.time_roll,
                                  time_jitter_us=opts.time_jitter_us, spec=info.frame_spec)
  return None


def eval_transform(config: Any, info: DatasetInfo):
  """Per-example deterministic evaluation transform or None."""
  if info.name in UINT8_IMAGE_DATASETS:
    return _normalize(data_options(config, info.name))
  return None


FIXTURE_DIR = "fixture"  # config.data_dir value selecting the built-in fixture


def _fixture_config(config: Any) -> ml_collections.ConfigDict:
  """A copy of the fields loaders read, pointing at the dataset's fixture folder (written in
  the layout ``config.data.layout`` names, the original release for ``auto``)."""
  opts = dict(getattr(config, "data", None) or {})
  directory, overrides = fixtures.materialize(config.dataset, layout=opts.get("layout", "auto"))
  for key, value in overrides.items():
    if not opts.get(key):  # an explicit setting (e.g. another split file) wins
      opts[key] = value
  return ml_collections.ConfigDict({
      "dataset": config.dataset, "data_dir": directory, "num_steps": config.num_steps,
      "seed": getattr(config, "seed", 0), "data": ml_collections.ConfigDict(opts)})


def load_dataset(config: Any) -> DatasetSplits:
  validate_dataset_name(config.dataset)
  if config.data_dir == FIXTURE_DIR and config.dataset in fixtures.WRITERS:
    config = _fixture_config(config)
  splits = DATASETS[config.dataset](config)
  if splits.files and data_options(config, config.dataset).get("verify", False):
    verify.verify_files(splits.files, desc=f"verify {config.dataset}")
  return splits
