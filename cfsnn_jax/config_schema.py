"""Shared config sections and their validation (ml_collections).

Experiment files in ``configs/`` start from ``base_config()`` and override fields; every field
has a one-line comment here. ``validate_config(config)`` checks every name and number that
could fail later (dataset, model, neuron, loss, optimizer, T, D, threshold, batch size) and
raises ``errors.UserError`` with one line naming the valid choices, before anything compiles.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from cfsnn_jax import choices, neuron_spec as neuron_spec_lib
from cfsnn_jax.errors import UserError, unknown_choice


def neuron_config(name: str = "cf", **overrides: Any) -> ml_collections.ConfigDict:
  """``name`` picks a preset of ``neuron_spec.NEURON_PRESETS``; a field left ``None`` keeps the
  preset's value, a set field overrides it (e.g. ``--config.neuron.levels=2``)."""
  c = ml_collections.ConfigDict()
  c.name = name  # preset: if | lif | plif | cf | cf_signed | dsatgo
  c.charge = config_dict.placeholder(str)  # if | lif | plif
  c.tau = config_dict.placeholder(float)  # LIF time constant (decay 1 - 1/tau)
  c.decay_init = config_dict.placeholder(float)  # PLIF initial decay
  c.levels = config_dict.placeholder(int)  # D: max spikes per step (CF)
  c.signed = config_dict.placeholder(bool)  # signed firing
  c.reset = config_dict.placeholder(str)  # soft | hard
  c.detach_reset = config_dict.placeholder(bool)  # stop_gradient on the reset term
  c.decay_input = config_dict.placeholder(bool)  # SpikingJelly decay_input form
  c.threshold = config_dict.placeholder(float)  # base threshold theta
  c.threshold_mode = config_dict.placeholder(str)  # fixed | adaptive (DS-ATGO)
  c.surrogate = config_dict.placeholder(str)  # sigmoid | atan | rectangular | triangle
  c.alpha = config_dict.placeholder(float)  # initial sharpness (None: family default)
  c.surrogate_mode = config_dict.placeholder(str)  # per_step | per_layer | fixed | dynamic
  c.dynamic_stat = config_dict.placeholder(str)  # DS-ATGO width statistic: std | threshold
  c.activation = config_dict.placeholder(str)  # spike (default) | relu: the ANN twin (T = 1)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def neuron_spec(neuron_cfg: Any) -> neuron_spec_lib.NeuronSpec:
  fields = dict(neuron_cfg)
  name = fields.pop("name")
  return neuron_spec_lib.resolve_spec(name, **fields)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, data order, per-step randomness
  c.dataset = "digits"  # data registry name (cfsnn_jax.data.DATASETS)
  c.data_dir = ""  # where the dataset lives on disk (unused by embedded datasets)
  c.data = ml_collections.ConfigDict()  # dataset-specific options (cfsnn_jax.data docs)
  c.data_workers = 0  # input worker processes (0: threads only; use 2-8 on accelerator hosts)
  c.num_steps = 4  # T
  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"  # model registry name (cfsnn_jax.models.MODELS); other fields: kwargs
  c.model.remat = "none"  # none | neuron | block | block_full: jax.checkpoint (PERFORMANCE.md)
  c.neuron = neuron_config("cf")
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "ce"  # ce (time-mean logits) | tet
  c.loss.label_smoothing = 0.0  # epsilon
  c.loss.tet_lambda = 1e-3  # TET MSE weight
  c.loss.tet_phi = 1.0  # TET MSE target
  c.loss.pn_weight = 1e-3  # lambda_PN (0 disables the PN loss)
  c.loss.pn_variant = "mean"  # mean | sign
  c.loss.pn_kappa = 1.0  # kappa of the sign variant
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | sgd
  c.optimizer.learning_rate = 1e-3  # peak learning rate
  c.optimizer.momentum = 0.9  # SGD momentum
  c.optimizer.weight_decay = 0.0  # decoupled (adamw) / L2 (sgd); never on BN, bias, rho, w
  c.optimizer.warmup_steps = 0  # linear warm-up steps
  c.optimizer.schedule = "cosine"  # cosine | constant
  c.optimizer.grad_clip = 0.0  # global-norm clip (0 disables)
  c.batch_size = 64  # global batch size (all processes / devices)
  c.num_epochs = 10  # training length in epochs of the training split
  c.num_train_steps = -1  # overrides num_epochs when > 0
  c.log_every_steps = 20  # train metrics to JSONL / TensorBoard
  c.eval_every_steps = 0  # 0: evaluate once per epoch
  c.checkpoint_every_steps = 0  # 0: checkpoint once per epoch (and always at the end)
  c.checkpoint_every_seconds = 0.0  # also checkpoint when this long since the last (0: off)
  c.keep_checkpoints = 2  # orbax max_to_keep (>= 1)
  c.progress_bar = True  # tqdm progress bar on process 0
  c.compute_dtype = "float32"  # float32 | bfloat16 (mixed precision: float32 parameters)
  c.init_from = ""  # workdir of another run: fine-tune from its latest parameters
  c.analysis_report = True  # at the end: firing rates, histograms, energy (PNG + JSON)
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


def validate_config(config: Any) -> None:
  """Rejects bad names and numbers with one line, before data loading or compilation."""
  from cfsnn_jax import data  # the dataset registry (jax-free)

  data.validate_dataset_name(config.dataset)
  _check("model", config.model.name, sorted(choices.MODEL_NAMES))
  _check("remat", config.model.get("remat", "none"), choices.REMAT_NAMES)
  neuron_spec_lib.validate_num_steps(config.num_steps)
  neuron_spec(config.neuron)
  _check("loss", config.loss.name, choices.TASK_LOSSES)
  _check("pn_variant", config.loss.pn_variant, choices.PN_VARIANTS)
  _check("optimizer", config.optimizer.name, choices.OPTIMIZERS)
  _check("schedule", config.optimizer.schedule, choices.SCHEDULES)
  _check("compute_dtype", config.compute_dtype, choices.COMPUTE_DTYPES)
  if config.batch_size < 1:
    raise UserError(f"batch_size must be >= 1, got {config.batch_size}")
  if config.keep_checkpoints < 1:
    raise UserError(f"keep_checkpoints must be >= 1, got {config.keep_checkpoints}")
  _reject_non_finite(config.to_dict())


def _check(what: str, value: Any, valid: tuple) -> None:
  if value not in valid:
    raise unknown_choice(what, value, valid)


def _reject_non_finite(tree: Any, prefix: str = "") -> None:
  """NaN / inf in any float field is an error (naming the first such field)."""
  import math
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      _reject_non_finite(value, f"{name}.")
    elif isinstance(value, float) and not math.isfinite(value):
      raise UserError(f"config.{name} must be a finite number, got {value}")
