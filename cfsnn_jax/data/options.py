"""Dataset-specific options: ``config.data`` defaults per dataset and their merge.

Contract: ``default_data_config(name)`` -> the ``ml_collections.ConfigDict`` of every option
the dataset ``name`` reads, each with a one-line comment (an experiment config sets
``c.data = data.default_data_config('cifar100')`` and overrides fields). ``data_options(config,
name)`` -> those defaults updated with the fields present in ``config.data`` (which may be
empty); a field the dataset does not know fails with one line listing the valid ones.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from cfsnn_jax.errors import UserError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)


def _verify(c: ml_collections.ConfigDict) -> None:
  c.verify = True  # before training, open every file's header and check its size (verify.py)


def _image(c: ml_collections.ConfigDict, *, mean, std, autoaugment: bool,
           cutout_length: int) -> None:
  _verify(c)
  c.crop = True  # random crop after zero padding
  c.crop_padding = 4  # padding (pixels per side) of the random crop
  c.flip = True  # random horizontal flip, p = 0.5
  c.autoaugment = autoaugment  # AutoAugment CIFAR-10 policy (numpy + PIL)
  c.autoaugment_fill = 128  # grey level filling pixels uncovered by shear/translate/rotate
  c.cutout = False  # Cutout: one square set to 0 after normalisation
  c.cutout_length = cutout_length  # Cutout square side in pixels
  c.normalize = True  # per-channel (x / 255 - mean) / std; False: x / 255 only
  c.mean = mean  # per-channel mean (RGB) of the training images
  c.std = std  # per-channel standard deviation (RGB)


def _events(c: ml_collections.ConfigDict, *, frame_size, flip: bool, max_shift: int) -> None:
  _verify(c)
  c.frame_size = frame_size  # (H, W) of the frames after resizing (sensor size: no resize)
  c.cache = True  # cache the binned frames on disk (preprocessing runs once)
  c.cache_dir = ""  # where the frame cache goes ("" = <data_dir>/frames_cache)
  c.denoise_us = 0  # drop events without a 4-neighbour event this recent (us; 0: off)
  c.refractory_us = 0  # drop events this soon after the pixel's previous event (us; 0: off)
  c.flip = flip  # training: random horizontal flip of all frames, p = 0.5
  c.max_shift = max_shift  # training: random translation up to this many pixels (0: off)
  c.translate = "roll"  # roll (circular, as TET) | pad (zero padding, a random crop)
  c.time_roll = 0  # training: random circular roll of the T frames up to this many (0: off)
  c.time_jitter_us = 0  # training: Gaussian time jitter std of each event (us; 0: off)


# Named event augmentation recipes (the config fields they set); configs name theirs.
EVENT_RECIPES = {
    "none": dict(flip=False, max_shift=0),
    # TET (Deng et al. 2022) CIFAR10-DVS code: flip p = 0.5, then torch.roll by up to 5 px
    "tet": dict(flip=True, max_shift=5),
    # the same translation without the flip, for data whose left / right differ (gestures)
    "tet_noflip": dict(flip=False, max_shift=5),
}


def event_augment_recipe(name: str) -> dict:
  """The ``config.data`` fields of the named event augmentation recipe."""
  if name not in EVENT_RECIPES:
    from cfsnn_jax.errors import unknown_choice
    raise unknown_choice("event augmentation recipe", name, EVENT_RECIPES)
  return dict(EVENT_RECIPES[name], translate="roll", time_roll=0, time_jitter_us=0)


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """Every option of dataset ``name`` with its default (empty for embedded datasets)."""
  c = ml_collections.ConfigDict()
  if name in ("cifar10", "cifar100"):
    c.source = "auto"  # auto | tarball (original python tarball / folder) | tfds
    ten = name == "cifar10"
    _image(c, mean=CIFAR10_MEAN if ten else CIFAR100_MEAN,
           std=CIFAR10_STD if ten else CIFAR100_STD, autoaugment=True,
           cutout_length=16 if ten else 8)
  elif name == "tiny_imagenet":
    _image(c, mean=TINY_IMAGENET_MEAN, std=TINY_IMAGENET_STD, autoaugment=False,
           cutout_length=32)
    c.layout = "auto"  # auto | original (val/images + val_annotations.txt) | val_folders
  elif name == "cifar10_dvs":
    c.layout = "auto"  # on-disk layout: auto (detected) | aedat | aedat4 | events_np | frames
    _events(c, frame_size=(48, 48), **EVENT_RECIPES["tet"])
    c.split_file = ""  # JSON split index ("" = the published data/splits/cifar10_dvs_split.json)
    c.sj_split_by = "number"  # SpikingJelly frames layout: frames_number_<T>_split_by_<this>
  elif name == "dvs_gesture":
    c.layout = "auto"  # on-disk layout: auto (detected) | aedat | tonic | events_np | frames
    _events(c, frame_size=(128, 128), flip=False, max_shift=0)
    c.sj_split_by = "number"  # SpikingJelly frames layout: frames_number_<T>_split_by_<this>
  elif name == "evtouch":
    c.layout = "auto"  # on-disk layout: auto (detected) | index | tactilesgnet
    _events(c, frame_size=(39, 1), flip=False, max_shift=0)
    c.index_file = "samples.csv"  # CSV (file,label,split) under data_dir listing the samples
    c.num_taxels = 39  # sensor rows: taxel ids are 0..num_taxels-1
    c.num_classes = 0  # number of classes (0: 1 + the largest label in the index)
  elif name in ("sst2", "sst5"):
    _verify(c)
    if name == "sst2":
      c.source = "auto"  # auto | tsv (GLUE SST-2/train.tsv, dev.tsv) | tfds (glue/sst2)
    c.max_len = 64  # tokens per example: longer sentences are cut, shorter padded with id 0
    c.min_freq = 1  # a training word needs this many occurrences to enter the vocabulary
    c.max_vocab = 0  # keep at most this many words, most frequent first (0: no limit)
    c.lowercase = True  # lowercase before splitting on whitespace
  elif name == "mnist_dvs_synthetic":
    c.frame_size = (34, 34)  # (H, W) of the simulated sensor; the 28x28 digit is centred
    c.contrast_threshold = 0.15  # log-intensity change that emits one event
    c.steps_per_saccade = 8  # simulation sub-steps per leg of the 3-saccade motion
    c.saccade_pixels = 2.0  # length of each saccade leg in pixels
  return c


def data_options(config: Any, name: str) -> ml_collections.ConfigDict:
  """Defaults of ``name`` updated with ``config.data`` (unknown fields are an error)."""
  opts = default_data_config(name)
  given = getattr(config, "data", None)
  if given is None:
    return opts
  for key, value in dict(given).items():
    if key not in opts:
      valid = ", ".join(sorted(opts)) or "none"
      raise UserError(f"unknown config.data.{key} for dataset {name!r}; valid options: "
                       f"{valid}")
    try:
      opts[key] = value
    except TypeError as e:
      raise UserError(f"config.data.{key} = {value!r} for dataset {name!r}: {e}") from None
  return opts
