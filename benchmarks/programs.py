"""The train and eval programs of a shipped config, traced on abstract shapes (nothing
allocated), for exporting or lowering them for a platform this host does not have.

Contract:
- ``load_config(name) -> ConfigDict``: ``cfsnn_jax/configs/<name>.py``, ``name`` may end in
  ``:tiny``; ``config_names()``: every shipped config.
- ``batch_spec(config, info)``: the training loop's batch (``{"image", "label"[, "mask"]}``)
  as ``jax.ShapeDtypeStruct`` s of the global batch: what ``data.pipeline`` yields (float32
  images / event frames ``[B, T, H, W, 2]``, int32 token ids, int32 labels, float32 mask).
- ``abstract_steps(config, info, devices=None) -> Programs``: ``steps.create_train_state``
  under ``jax.eval_shape`` and ``steps.make_steps`` exactly as ``train.py`` builds them, so
  ``Programs.train`` / ``.eval`` are the loop's jitted steps and ``.state`` / ``.batch`` /
  ``.eval_batch`` their abstract (sharded) arguments.
- ``dataset_info(config)``: the ``DatasetInfo`` the loop sees: for ``:tiny`` configs the
  fixture's (read from it, a few files), else ``FULL_SIZE`` (the real data sets' classes and
  sizes, no data needed).
- ``export(programs, platform)`` -> ``{"train": Exported, "eval": Exported}``;
  ``lower_text(programs, platform)`` -> ``{"train": str, "eval": str}`` (StableHLO of
  ``jit.trace(...).lower(lowering_platforms=(platform,))``: no serialization check, so the
  CPU program's custom calls may be inspected).
- ``environment(values)``: a context setting environment variables (``None``: unset) and
  restoring them; ``CPU_SWITCHES_OFF``: every CPU switch off (the switches are read while
  tracing, so a trace inside ``environment(CPU_SWITCHES_OFF)`` is the accelerator program).
- ``custom_call_targets(stablehlo_text)``: the custom-call targets a program holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cfsnn_jax import data
from cfsnn_jax.backends import switches
from cfsnn_jax.config import resolve
from cfsnn_jax.training import steps
from cfsnn_jax.data.sources import DatasetInfo

# The real data sets as the loaders read them (name -> number of training examples, classes,
# vocabulary size for text): the sizes of the published splits (docs/DATA.md). The input
# shape comes from the config's data options (frame size, max_len), as the loaders set it.
FULL_SIZE: dict[str, dict[str, int]] = {
    "cifar10": dict(num_train=50_000, num_classes=10),
    "cifar100": dict(num_train=50_000, num_classes=100),
    "cifar10_dvs": dict(num_train=9_000, num_classes=10),  # 900 per class (our split)
    "dvs_gesture": dict(num_train=1_176, num_classes=11),  # the official train trials
    "tiny_imagenet": dict(num_train=100_000, num_classes=200),
    # vocabulary = the training split's words (data.sst, min_freq 1): approximate sizes; the
    # embedding is a gather, so the step's FLOPs hardly depend on it
    "sst2": dict(num_train=67_349, num_classes=2, vocab_size=15_000),  # GLUE SST-2 train
    "sst5": dict(num_train=8_544, num_classes=5, vocab_size=17_000),  # SST-5 train trees
    "evtouch": dict(num_train=576, num_classes=36),  # the release's train folder
    "mnist5k": dict(num_train=5_000, num_classes=10),
}


class Programs(NamedTuple):
  config: Any
  info: DatasetInfo
  train: Any  # jitted train step (state donated)
  eval: Any  # jitted eval step
  state: Any  # abstract, replicated
  batch: dict  # abstract, sharded over "data"
  eval_batch: dict
  num_params: int


def config_names() -> list[str]:
  """Every ``cfsnn_jax/configs/*.py`` (the package's shipped configs)."""
  import cfsnn_jax.configs
  folder = os.path.dirname(os.path.abspath(cfsnn_jax.configs.__file__))
  return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def config_path(name: str) -> str:
  """The file of shipped config ``name`` (without ``:variant``)."""
  import cfsnn_jax.configs
  return os.path.join(os.path.dirname(os.path.abspath(cfsnn_jax.configs.__file__)),
                      name.partition(":")[0] + ".py")


def load_config(name: str) -> Any:
  base, _, variant = name.partition(":")
  module = importlib.import_module(f"cfsnn_jax.configs.{base}")
  return module.get_config(variant or None)


def dataset_info(config: Any) -> DatasetInfo:
  """The loop's ``DatasetInfo``: the fixture's for ``:tiny`` (``data_dir = "fixture"``),
  else the fixture's input layout with the real data set's classes / vocabulary."""
  fixture = config.copy_and_resolve_references()
  fixture.data_dir = data.FIXTURE_DIR
  info = data.load_dataset(fixture).info
  if config.data_dir == data.FIXTURE_DIR or config.dataset not in FULL_SIZE:
    return info
  full = FULL_SIZE[config.dataset]
  return dataclasses.replace(info, num_classes=full["num_classes"],
                             vocab_size=full.get("vocab_size", info.vocab_size))


def batch_spec(config: Any, info: DatasetInfo, mesh: Any, *, eval: bool = False) -> dict:
  B = config.batch_size
  sharded = NamedSharding(mesh, P("data"))
  if info.vocab_size:
    image = jax.ShapeDtypeStruct((B,) + tuple(info.input_shape), jnp.int32, sharding=sharded)
  elif info.static_input:
    image = jax.ShapeDtypeStruct((B,) + tuple(info.input_shape), jnp.float32,
                                 sharding=sharded)
  else:
    image = jax.ShapeDtypeStruct((B, config.num_steps) + tuple(info.input_shape), jnp.float32,
                                 sharding=sharded)
  out = {"image": image, "label": jax.ShapeDtypeStruct((B,), jnp.int32, sharding=sharded)}
  if eval:
    out["mask"] = jax.ShapeDtypeStruct((B,), jnp.float32, sharding=sharded)
  return out


def abstract_steps(config: Any, info: DatasetInfo | None = None,
                   devices: list | None = None, total_steps: int = 1000) -> Programs:
  info = dataset_info(config) if info is None else info
  built: dict[str, Any] = {}
  run = resolve(config)

  def init():
    built["setup"] = steps.create_train_state(run, info, total_steps)
    return built["setup"].state

  state = jax.eval_shape(init)
  setup = built["setup"]._replace(state=state)
  programs = steps.make_steps(run, setup, devices)
  replicated = NamedSharding(programs.mesh, P())
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                       state)
  return Programs(config, info, programs.train, programs.eval, state,
                  batch_spec(config, info, programs.mesh),
                  batch_spec(config, info, programs.mesh, eval=True), setup.num_params)


def export(programs: Programs, platform: str) -> dict[str, Any]:
  return {"train": jax.export.export(programs.train, platforms=[platform])(
              programs.state, programs.batch),
          "eval": jax.export.export(programs.eval, platforms=[platform])(
              programs.state, programs.eval_batch)}


def lowered(programs: Programs, platform: str) -> dict[str, Any]:
  return {"train": programs.train.trace(programs.state, programs.batch).lower(
              lowering_platforms=(platform,)),
          "eval": programs.eval.trace(programs.state, programs.eval_batch).lower(
              lowering_platforms=(platform,))}


def lower_text(programs: Programs, platform: str) -> dict[str, str]:
  return {k: v.as_text() for k, v in lowered(programs, platform).items()}


CPU_SWITCHES_OFF = {switches.ONEDNN_CONV: "0", switches.BACKEND_WORKAROUNDS: "off",
                    switches.CPU_TUNING: "0"}


def _set_environment(values: dict) -> None:
  for k, v in values.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@contextlib.contextmanager
def environment(values: dict):
  before = {k: os.environ.get(k) for k in values}
  _set_environment(values)
  try:
    yield
  finally:
    _set_environment(before)


def custom_call_targets(text: str) -> set[str]:
  return set(re.findall(r"stablehlo\.custom_call @([\w.$-]+)", text))
