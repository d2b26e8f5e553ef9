"""Experiment recipes shared by more than one ``configs/*.py`` file.

Each function returns a complete config (``config_schema.base_config`` plus the recipe's
fields, every one commented) for a dataset name and the config argument (``"tiny"`` selects
the ``:tiny`` branch). The config files in ``configs/`` stay one-screen: their docstring (the
command and the recipe's source) and a call to one of these.
"""

from __future__ import annotations

import ml_collections

from cfsnn_jax import data
from cfsnn_jax.config import schema as config_schema


def _sgd_cifar(c: ml_collections.ConfigDict) -> None:
  """The CIFAR ResNet recipes' optimizer: SGD lr 0.1, momentum 0.9, weight decay 1e-4."""
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4


def cifar_resnet19(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
  """CF-SNN on CIFAR-10/100: ResNet-19, CF + per-step LSG + PN, SGD 0.1 cosine, 300 epochs."""
  c = config_schema.base_config()
  c.dataset = dataset  # cifar10 | cifar100
  c.data = data.default_data_config(dataset)
  c.num_steps = 4  # T: 2, 4 or 6 in the paper's table
  c.model.name = "resnet19"
  c.model.residual = "standard"  # standard | sew_add
  c.model.per_step_bn = False  # BN over T*B jointly
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.label_smoothing = 0.1
  c.loss.pn_weight = 1e-3
  _sgd_cifar(c)
  c.batch_size = 128
  c.num_epochs = 300
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.model.widths = (8, 16, 16)
    c.model.head_hidden = 16
    c.data.autoaugment = True  # keep the full augmentation path in the tiny run
  return c


def dsatgo_cifar_resnet19(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
  """DS-ATGO's CIFAR recipe (METHOD.md §4): ResNet-19 SEW-ADD, T = 2, SGD 0.1, 400 epochs."""
  c = config_schema.base_config()
  c.dataset = dataset  # cifar10 | cifar100
  c.data = data.default_data_config(dataset)
  c.num_steps = 2  # T
  c.model.name = "resnet19"
  c.model.residual = "sew_add"  # SEW-ADD residuals
  c.model.stem_width = 128  # the DS-ATGO code's ResNet-19 stem (TET's, the default, is 64)
  c.model.per_step_bn = False
  c.neuron = config_schema.neuron_config("dsatgo", dynamic_stat="std")
  c.loss.label_smoothing = 0.1
  c.loss.pn_weight = 0.0  # DS-ATGO alone; set 1e-3 to combine with the PN loss
  _sgd_cifar(c)
  c.batch_size = 100
  c.num_epochs = 400
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.model.widths = (8, 16, 16)
    c.model.stem_width = 8
    c.model.head_hidden = 16
  return c


def sst_text_transformer(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
  """SST-2 / SST-5: spiking text Transformer, CF + per-step LSG + PN, AdamW 5e-4, 20 epochs."""
  c = config_schema.base_config()
  c.dataset = dataset  # sst2 | sst5
  c.data = data.default_data_config(dataset)
  c.num_steps = 4  # T
  c.model.name = "text_transformer"
  c.model.max_len = 64  # longest token sequence the model accepts (= data.max_len)
  c.model.embed_dim = 256
  c.model.depth = 4
  c.model.num_heads = 8
  c.model.attention = "ssa"  # ssa | sdsa
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.pn_weight = 1e-3
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 5e-4
  c.optimizer.weight_decay = 1e-2
  c.batch_size = 64
  c.num_epochs = 20
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.data.max_len = 16
    c.model.max_len = 16
    c.model.embed_dim = 16
    c.model.depth = 1
    c.model.num_heads = 2
  return c


def events_vggsnn(dataset: str, arg: str | None, *, neuron: ml_collections.ConfigDict,
                  num_steps: int, pn_weight: float, batch_size: int,
                  frame_size: tuple[int, int] | None = None) -> ml_collections.ConfigDict:
  """Event data with VGGSNN and the TET loss (METHOD.md §5 DVS recipe), AdamW 1e-3, cosine,
  200 epochs; frames resized to ``frame_size`` when given (VGGSNN is built for 48x48)."""
  c = config_schema.base_config()
  c.dataset = dataset  # cifar10_dvs | dvs_gesture
  c.data = data.default_data_config(dataset)
  if frame_size is not None:
    c.data.frame_size = frame_size
  c.num_steps = num_steps  # T (frames)
  c.model.name = "vggsnn"
  c.model.per_step_bn = False
  c.neuron = neuron
  c.loss.name = "tet"
  c.loss.tet_lambda = 1e-3
  c.loss.tet_phi = 1.0
  c.loss.pn_weight = pn_weight
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = batch_size
  c.num_epochs = 200
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.num_steps = 4
    c.data.frame_size = (16, 16)
    c.model.layout = (4, "A", 8, "A")
  return c
