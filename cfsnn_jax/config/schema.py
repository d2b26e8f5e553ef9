"""The config schema: every field's type, range, default and one-line documentation, once.

Contract:
- ``FIELDS`` (top-level and sections), ``NEURON_FIELDS`` and ``MODEL_FIELDS`` (per model
  name) are the one declaration. ``base_config()`` / ``neuron_config()`` build the shared
  config sections from them; ``describe()`` renders them for ``--help``;
  ``validate_config(config)`` checks a config against them and raises ``UserError`` (one line
  naming the field, the value and what was expected) before any data is read or anything is
  compiled. NaN / inf are rejected in every float field.
- Model fields are checked against the chosen model (``config.model.name``): a field the
  model does not take is refused when it was set on the command line; one the config file
  declared for another model (``--config.model.name=resnet19`` on an MLP config) is dropped
  by ``fit_model_fields`` with a one-line note (docs/DECISIONS.md, issue 12).
- Upper bounds stop values that would hang compilation (``neuron.levels``: the level loop is
  unrolled; ``num_steps``: T-long scans and per-step parameters).
- Neither importing this module nor ``validate_config`` imports jax or flax (the CLI
  validates before importing them): names come from ``choices``, the neuron check from
  ``neuron_spec``.

Experiment files in ``configs/`` start from ``base_config()`` and override fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
from typing import Any, Iterable, Sequence

import ml_collections
from ml_collections import config_dict

from cfsnn_jax.config import choices
from cfsnn_jax.neuron import spec as neuron_spec_lib
from cfsnn_jax.errors import UserError, unknown_choice

MAX_NUM_STEPS = 512  # T above this: scans / per-step parameters too long to compile sensibly
MAX_LEVELS = 64  # D above this: the unrolled level loop does not finish compiling
MAX_DATA_WORKERS = 64


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. ``kind``: int | float | bool | str | ints (tuple of ints) | layout
  (tuple of ints and pooling letters); ``lo`` / ``hi`` bound numbers (and every element of
  ``ints``), open bounds with ``lo_open`` / ``hi_open``; ``choices`` for names; ``nullable``
  for fields that may stay ``None`` (neuron fields: keep the preset's value); ``nonempty``
  for tuples; ``extra`` lets one more value pass outside the range (``-1`` as "unset")."""
  path: str
  kind: str
  default: Any
  doc: str
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  choices: tuple[str, ...] | None = None
  nullable: bool = False
  nonempty: bool = False
  extra: Any = None

  def range_text(self) -> str:
    parts = []
    if self.choices:
      return " | ".join(self.choices)
    if self.lo is not None:
      parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
    if self.hi is not None:
      parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
    text = " and ".join(parts)
    if self.extra is not None:
      text = f"{self.extra} or {text}" if text else str(self.extra)
    if self.kind in ("ints", "layout") and text:
      text = f"each {text}"
    return text


F = Field
# The registries' valid names, declared once in the jax-free ``choices`` module.
OPTIMIZERS = choices.OPTIMIZERS
SCHEDULES = choices.SCHEDULES
COMPUTE_DTYPES = choices.COMPUTE_DTYPES
TASK_LOSSES = choices.TASK_LOSSES
PN_VARIANTS = choices.PN_VARIANTS
REMATS = choices.REMAT_NAMES
RESIDUALS = ("standard", "sew_add")
ATTENTIONS = ("ssa", "sdsa")
# Datasets read from their own on-disk format: an empty data_dir cannot work.
DATA_DIR_REQUIRED = ("tiny_imagenet", "cifar10_dvs", "dvs_gesture", "evtouch", "sst5")

FIELDS: tuple[Field, ...] = (
    F("seed", "int", 0, "parameter init, data order, per-step randomness", lo=0),
    F("dataset", "str", "digits", "data registry name (cfsnn_jax.data.DATASETS)"),
    F("data_dir", "str", "", "where the dataset lives on disk ('fixture': the tiny test copy; "
      "unused by embedded datasets)"),
    F("data_workers", "int", 0, "input worker processes (0: threads only; 2-8 on accelerator "
      "hosts)", lo=0, hi=MAX_DATA_WORKERS),
    F("num_steps", "int", 4, "T, simulation time steps", lo=1, hi=MAX_NUM_STEPS),
    F("model.name", "str", "mlp", "model registry name (cfsnn_jax.models.MODELS); the other "
      "model fields depend on it (MODEL_FIELDS)"),
    F("model.remat", "str", "none", "jax.checkpoint: none | neuron | block | block_full "
      "(docs/PERFORMANCE.md)", choices=REMATS),
    F("loss.name", "str", "ce", "ce (time-mean logits) | tet", choices=TASK_LOSSES),
    F("loss.label_smoothing", "float", 0.0, "label smoothing epsilon", lo=0.0, hi=1.0,
      hi_open=True),
    F("loss.tet_lambda", "float", 1e-3, "TET MSE weight lambda", lo=0.0, hi=1.0),
    F("loss.tet_phi", "float", 1.0, "TET MSE target phi"),
    F("loss.pn_weight", "float", 1e-3, "lambda_PN (0 disables the PN loss)", lo=0.0),
    F("loss.pn_variant", "str", "mean", "PN loss variant: mean | sign", choices=PN_VARIANTS),
    F("loss.pn_kappa", "float", 1.0, "kappa of the sign variant", lo=0.0, lo_open=True),
    F("optimizer.name", "str", "adamw", "adamw | sgd", choices=OPTIMIZERS),
    F("optimizer.learning_rate", "float", 1e-3, "peak learning rate", lo=0.0, lo_open=True),
    F("optimizer.momentum", "float", 0.9, "SGD momentum", lo=0.0, hi=1.0, hi_open=True),
    F("optimizer.weight_decay", "float", 0.0, "decoupled (adamw) / L2 (sgd); never on BN, "
      "bias, rho, w", lo=0.0),
    F("optimizer.warmup_steps", "int", 0, "linear warm-up steps (fewer than the run's steps)",
      lo=0),
    F("optimizer.schedule", "str", "cosine", "cosine | constant", choices=SCHEDULES),
    F("optimizer.grad_clip", "float", 0.0, "global-norm clip (0 disables)", lo=0.0),
    F("batch_size", "int", 64, "global batch size (all processes / devices)", lo=1),
    F("num_epochs", "int", 10, "training length in epochs of the training split", lo=1),
    F("num_train_steps", "int", -1, "overrides num_epochs when set (-1: use num_epochs)", lo=1,
      extra=-1),
    F("log_every_steps", "int", 20, "train metrics to JSONL / TensorBoard (and a progress line "
      "when stderr is not a terminal)", lo=1),
    F("eval_every_steps", "int", 0, "0: evaluate once per epoch", lo=0),
    F("checkpoint_every_steps", "int", 0, "0: checkpoint once per epoch (and always at the end)",
      lo=0),
    F("checkpoint_every_seconds", "float", 0.0, "also checkpoint when this long since the "
      "last (0: off)", lo=0.0),
    F("keep_checkpoints", "int", 2, "orbax max_to_keep", lo=1),
    F("progress_bar", "bool", True, "progress on process 0 (a bar on a terminal, lines "
      "otherwise)"),
    F("compute_dtype", "str", "float32", "float32 | bfloat16 (float32 parameters)",
      choices=COMPUTE_DTYPES),
    F("init_from", "str", "", "workdir of another run: fine-tune from its latest parameters"),
    F("analysis_report", "bool", True, "at the end: firing rates, histograms, energy (PNG + "
      "JSON)"),
)

NEURON_FIELDS: tuple[Field, ...] = (
    F("neuron.name", "str", "cf", "preset: if | lif | plif | cf | cf_signed | dsatgo"),
    F("neuron.charge", "str", None, "if | lif | plif", nullable=True),
    F("neuron.tau", "float", None, "LIF time constant (decay 1 - 1/tau)", lo=1.0,
      nullable=True),
    F("neuron.decay_init", "float", None, "PLIF initial decay", lo=0.0, hi=1.0, lo_open=True,
      hi_open=True, nullable=True),
    F("neuron.levels", "int", None, "D: max spikes per step (CF)", lo=1, hi=MAX_LEVELS,
      nullable=True),
    F("neuron.signed", "bool", None, "signed firing", nullable=True),
    F("neuron.reset", "str", None, "soft | hard", nullable=True),
    F("neuron.detach_reset", "bool", None, "stop_gradient on the reset term", nullable=True),
    F("neuron.decay_input", "bool", None, "SpikingJelly decay_input form", nullable=True),
    F("neuron.threshold", "float", None, "base threshold theta", lo=0.0, lo_open=True,
      nullable=True),
    F("neuron.threshold_mode", "str", None, "fixed | adaptive (DS-ATGO)", nullable=True),
    F("neuron.surrogate", "str", None, "sigmoid | atan | rectangular | triangle",
      nullable=True),
    F("neuron.alpha", "float", None, "initial sharpness (None: family default)", lo=0.0,
      lo_open=True, nullable=True),
    F("neuron.surrogate_mode", "str", None, "per_step | per_layer | fixed | dynamic",
      nullable=True),
    F("neuron.dynamic_stat", "str", None, "DS-ATGO width statistic: std | threshold",
      nullable=True),
    F("neuron.activation", "str", None, "spike (default) | relu: the ANN twin (T = 1)",
      nullable=True),
)


def _m(name: str, kind: str, doc: str, **kw: Any) -> Field:
  return Field(f"model.{name}", kind, kw.pop("default", None), doc, **kw)


_PER_STEP_BN = _m("per_step_bn", "bool", "BN statistics per time step (False: over T*B)")
_REMAT = _m("remat", "str", "jax.checkpoint policy", choices=REMATS)
_RESNET = (
    _m("stage_blocks", "ints", "blocks per stage", lo=1, nonempty=True),
    _m("widths", "ints", "channels per stage", lo=1, nonempty=True),
    _m("strides", "ints", "first-block stride per stage", lo=1, nonempty=True),
    _m("stem_width", "int", "stem channels (0: the first stage's width)", lo=0),
    _m("stem_stride", "int", "stem stride", lo=1),
    _m("stem_pool", "bool", "max-pool after the stem"),
    _m("head_hidden", "int", "hidden FC width before the classifier (0: none)", lo=0),
    _m("residual", "str", "standard | sew_add", choices=RESIDUALS),
    _PER_STEP_BN, _REMAT)
_VGG = (
    _m("layout", "layout", "conv widths and pooling letters ('A' average, 'M' max)", lo=1,
       nonempty=True),
    _m("hidden", "ints", "hidden FC widths before the classifier (may be empty)", lo=1),
    _PER_STEP_BN, _REMAT)
_TRANSFORMER = (
    _m("embed_dim", "int", "embedding width", lo=1),
    _m("depth", "int", "encoder blocks", lo=1),
    _m("num_heads", "int", "attention heads (divides embed_dim)", lo=1),
    _m("mlp_ratio", "float", "MLP width / embed_dim", lo=0.0, lo_open=True),
    _m("attention", "str", "ssa (Spikformer) | sdsa (Spike-driven Transformer)",
       choices=ATTENTIONS),
    _m("attn_scale", "float", "attention scale", lo=0.0, lo_open=True),
    _m("attn_threshold", "float", "attention neuron threshold", lo=0.0, lo_open=True),
    _PER_STEP_BN, _REMAT)
# Model name -> the fields its constructor takes (``remat`` included); kept equal to the
# constructors' signatures by tests/test_config_schema.py. ``required``: no default there.
MODEL_FIELDS: dict[str, tuple[Field, ...]] = {
    "mlp": (_m("hidden", "ints", "hidden widths", lo=1, nonempty=True), _PER_STEP_BN, _REMAT),
    "convnet": (_m("channels", "ints", "conv widths (each followed by 2x2 average pooling)",
                   lo=1, nonempty=True),
                _m("hidden", "int", "FC width before the classifier", lo=1),
                _PER_STEP_BN, _REMAT),
    "resnet19": _RESNET, "resnet18": _RESNET, "resnet20": _RESNET,
    "vggsnn": _VGG, "vgg_cifar": _VGG,
    "spikformer": (_m("patch_size", "int", "patch size", lo=1),) + _TRANSFORMER,
    "text_transformer": (_m("max_len", "int", "longest token sequence (= data.max_len)",
                            lo=0),
                         _m("pad_id", "int", "padding token id", lo=0)) + _TRANSFORMER,
}
REQUIRED_MODEL_FIELDS = {"mlp": ("hidden",), "convnet": ("channels", "hidden")}


# --------------------------------------------------------------------------------------------
# Building the shared sections.
# --------------------------------------------------------------------------------------------


def _set(c: ml_collections.ConfigDict, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  for p in parents:
    if p not in c:
      c[p] = ml_collections.ConfigDict()
    c = c[p]
  c[leaf] = value


def _placeholder(f: Field) -> Any:
  return config_dict.placeholder({"int": int, "float": float, "bool": bool, "str": str}[f.kind])


def neuron_config(name: str = "cf", **overrides: Any) -> ml_collections.ConfigDict:
  """``name`` picks a preset of ``neuron_spec.NEURON_PRESETS``; a field left ``None`` keeps the
  preset's value, a set field overrides it (e.g. ``--config.neuron.levels=2``)."""
  c = ml_collections.ConfigDict()
  for f in NEURON_FIELDS:
    leaf = f.path.split(".", 1)[1]
    c[leaf] = name if leaf == "name" else _placeholder(f)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every shared field at its schema default (``data`` is the dataset's own section)."""
  c = ml_collections.ConfigDict()
  for f in FIELDS:
    _set(c, f.path, f.default)
    if f.path == "data_dir":
      c.data = ml_collections.ConfigDict()  # dataset-specific options (cfsnn_jax.data docs)
  c.neuron = neuron_config("cf")
  return c


def make_tiny(c: ml_collections.ConfigDict, steps: int = 3, batch_size: int = 8) -> None:
  """The ``:tiny`` branch of an experiment config: a few steps on a small fixture written in
  the dataset's real on-disk format (``data_dir = "fixture"``), evaluation and checkpoint at
  the end, no progress bar. The model shrinks in each config file."""
  c.data_dir = "fixture"
  c.num_train_steps = steps
  c.batch_size = batch_size
  c.eval_every_steps = steps
  c.checkpoint_every_steps = steps
  c.optimizer.warmup_steps = 0
  c.progress_bar = False


def describe() -> str:
  """The schema as text for ``--help``: one line per field (path, type, range, doc)."""
  lines = ["Config fields (--config.FIELD=VALUE; cfsnn_jax/config/schema.py):"]

  def add(f: Field, indent: str = "  ") -> None:
    rng = f.range_text()
    rng = f" [{rng}]" if rng and not f.choices else ""
    lines.append(f"{indent}{f.path} ({f.kind}{rng}): {f.doc}")

  for f in FIELDS + NEURON_FIELDS:
    add(f)
  lines.append("  data.*: dataset options (cfsnn_jax.data.default_data_config, docs/DATA.md)")
  lines.append("Model fields, by config.model.name:")
  for name, fields in MODEL_FIELDS.items():
    lines.append(f"  {name}: " + ", ".join(f.path.split(".", 1)[1] for f in fields))
  seen = set()
  for fields in MODEL_FIELDS.values():
    for f in fields:
      if f.path not in seen and f.path != "model.remat":
        seen.add(f.path)
        add(f, "    ")
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------


def _get(config: Any, path: str) -> Any:
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _has(config: Any, path: str) -> bool:
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _number_in_range(f: Field, x: float) -> bool:
  if f.lo is not None and (x < f.lo or (f.lo_open and x == f.lo)):
    return False
  if f.hi is not None and (x > f.hi or (f.hi_open and x == f.hi)):
    return False
  return True


def _fail(f: Field, value: Any, expected: str) -> UserError:
  return UserError(f"config.{f.path}={value!r}: expected {expected} ({f.doc})")


def check_field(f: Field, value: Any) -> None:
  """Raises ``UserError`` when ``value`` does not fit ``f``'s type and range."""
  if value is None:
    if f.nullable:
      return
    raise _fail(f, value, f"a {f.kind}, not None")
  kind = f.kind
  if kind == "bool":
    if not isinstance(value, bool):
      raise _fail(f, value, "true or false")
    return
  if kind == "str":
    if not isinstance(value, str):
      raise _fail(f, value, "a string")
    if f.choices and value not in f.choices:
      leaf = f.path.split(".")[-1]
      raise unknown_choice(f.path.split(".")[0] if leaf == "name" else leaf, value, f.choices)
    return
  if kind in ("int", "float"):
    ok_type = (isinstance(value, int) if kind == "int"
               else isinstance(value, (int, float))) and not isinstance(value, bool)
    if not ok_type:
      raise _fail(f, value, "an integer" if kind == "int" else "a number")
    if kind == "float" and not math.isfinite(value):
      raise _fail(f, value, "a finite number")
    if f.extra is not None and value == f.extra:
      return
    if not _number_in_range(f, value):
      raise _fail(f, value, f"{kind} {f.range_text()}")
    return
  if kind in ("ints", "layout"):
    if not isinstance(value, (tuple, list)):
      raise _fail(f, value, "a tuple like (32, 64)")
    if f.nonempty and not value:
      raise _fail(f, value, "a non-empty tuple")
    for x in value:
      if kind == "layout" and isinstance(x, str):
        if x not in ("A", "M"):
          raise _fail(f, value, "widths and pooling letters 'A' / 'M'")
        continue
      if not isinstance(x, int) or isinstance(x, bool) or not _number_in_range(f, x):
        raise _fail(f, value, f"integers, {f.range_text()}")
    return
  raise AssertionError(f"unknown field kind {kind!r}")


def model_fields(name: str) -> dict[str, Field]:
  if name not in MODEL_FIELDS:
    raise unknown_choice("model", name, sorted(MODEL_FIELDS))
  return {f.path.split(".", 1)[1]: f for f in MODEL_FIELDS[name]}


def fit_model_fields(config: Any, overridden: Iterable[str] = ()) -> list[str]:
  """Drops the ``config.model`` fields the chosen model does not take and were not set on
  the command line (``overridden``: field paths like ``model.hidden``); returns one note per
  dropped field. A command-line field the model does not take is a ``UserError``."""
  name = config.model.name
  accepted = model_fields(name)
  overridden = set(overridden)
  notes, drop = [], []
  for key in config.model.keys():
    if key == "name" or key in accepted:
      continue
    if f"model.{key}" in overridden:
      raise UserError(f"config.model.{key} does not apply to model {name!r}; its fields: "
                      f"{', '.join(accepted)}")
    drop.append(key)
  for key in drop:
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
      del config.model[key]
    notes.append(f"note: config.model.{key} does not apply to model {name!r}; dropped")
  return notes


def validate_config(config: Any, *, require_data_dir: bool = False) -> None:
  """Rejects bad names, types and numbers with one line, before data loading or compilation.

  ``require_data_dir``: also refuse an empty ``data_dir`` for the datasets that read their own
  files (the CLI sets it; a full recipe config legitimately ships with it empty).
  Model fields the chosen model does not take are an error here (the CLI drops those the
  config file declared for another model first, ``fit_model_fields``)."""
  from cfsnn_jax import data  # the dataset registry is jax-free

  for f in FIELDS:
    if not _has(config, f.path):
      raise UserError(f"config.{f.path} is missing; start configs from "
                      "config_schema.base_config()")
    check_field(f, _get(config, f.path))
  try:
    data.validate_dataset_name(config.dataset)
  except UserError:
    raise
  except ValueError as e:  # the registry's one-line message
    raise UserError(str(e)) from None
  if require_data_dir and config.dataset in DATA_DIR_REQUIRED and not config.data_dir:
    raise UserError(f"config.data_dir is unset: dataset {config.dataset!r} reads its files "
                    "from disk; pass --config.data_dir=/path/to/the/data ('fixture' for the "
                    "tiny test copy, docs/DATA.md)")
  if (require_data_dir and config.data_dir not in ("", "fixture")
      and "://" not in config.data_dir and not os.path.exists(config.data_dir)):
    raise UserError(f"config.data_dir={config.data_dir!r}: no such directory")
  if 0 < config.num_train_steps <= config.optimizer.warmup_steps:
    raise UserError(f"config.optimizer.warmup_steps={config.optimizer.warmup_steps} is not "
                    f"shorter than the run (num_train_steps={config.num_train_steps})")
  accepted = model_fields(config.model.name)
  for key, value in config.model.items():
    if key == "name":
      continue
    if key not in accepted:
      raise UserError(f"config.model.{key} does not apply to model {config.model.name!r}; "
                      f"its fields: {', '.join(accepted)}")
    check_field(accepted[key], value)
  for key in REQUIRED_MODEL_FIELDS.get(config.model.name, ()):
    if key not in config.model:
      raise UserError(f"model {config.model.name!r} needs config.model.{key}, which this "
                      "config does not declare (start from a config file of that model)")
  known = {f.path.split(".", 1)[1] for f in NEURON_FIELDS}
  for key in config.neuron.keys():
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise UserError(f"unknown field config.neuron.{key}{hint}")
  for f in NEURON_FIELDS:
    if _has(config, f.path):
      check_field(f, _get(config, f.path))
  neuron_spec(config.neuron)  # preset names and the neuron's own consistency rules


def neuron_spec(neuron_cfg: Any) -> neuron_spec_lib.NeuronSpec:
  """The resolved ``NeuronSpec`` of a ``config.neuron`` section (jax-free)."""
  fields = dict(neuron_cfg)
  name = fields.pop("name")
  try:
    return neuron_spec_lib.resolve_spec(name, **fields)
  except UserError:
    raise
  except ValueError as e:  # neurons' own checks: user input, one line
    raise UserError(str(e)) from None


def field_paths() -> Sequence[str]:
  """Every declared path (shared, neuron and model fields)."""
  paths = [f.path for f in FIELDS + NEURON_FIELDS]
  for fields in MODEL_FIELDS.values():
    paths += [f.path for f in fields if f.path not in paths]
  return paths
