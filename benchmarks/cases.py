"""What the benchmark runs: one config per model, built from ``config_schema.base_config()``.

A *case* is (model, T, remat, dtype, batch, ann). ``case_config(case)`` returns the training
config the case times through ``steps.create_train_state`` / ``steps.make_steps``; the recipe
fields (loss, optimizer) follow the experiment configs of the same model (``configs/cifar100.py``
for ResNet-19, ``configs/cifar10_dvs.py`` for VGGSNN, ``configs/cifar10_spikformer.py`` for
Spikformer) and are restated here so a benchmark does not move when an experiment is retuned.
The ANN twin is the same network with ``neuron.activation = "relu"`` at T = 1.
``--tiny`` shrinks every model to a few channels (tests, smoke runs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.data.sources import DatasetInfo


@dataclasses.dataclass(frozen=True)
class Case:
  model: str  # a key of BENCH_MODELS
  num_steps: int  # T (the ANN twin: 1)
  batch: int  # global batch size
  dtype: str = "float32"  # compute dtype: float32 | bfloat16
  remat: str = "none"  # config.model.remat
  ann: bool = False  # the ReLU twin instead of the spiking network
  tiny: bool = False  # a few channels per layer (tests)

  @property
  def label(self) -> str:
    return (f"{self.model}{'-tiny' if self.tiny else ''} {'ANN' if self.ann else 'SNN'} "
            f"T={self.num_steps} {self.remat} {self.dtype}")


# What SpikingJelly computes in benchmarks/peers.py, shared by both peer models: LIF tau = 2
# with hard reset (SpikingJelly's decay_input form), fixed sigmoid surrogate alpha = 4, no PN
# loss, plain CE on the time-mean logits, SGD.
_PEER_TRAINING: dict[str, Any] = dict(
    neuron=dict(name="lif", tau=2.0, reset="hard", decay_input=True, surrogate="sigmoid",
                alpha=4.0, surrogate_mode="fixed"),
    pn_weight=0.0,
    loss=dict(name="ce", label_smoothing=0.0),
    optimizer=dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                   schedule="constant"))

# name -> (dataset description, model fields, tiny model fields, recipe overrides; optional
# neuron preset + overrides and PN-loss weight, default CF with per-step LSG and 1e-3)
BENCH_MODELS: dict[str, dict[str, Any]] = {
    "resnet19": dict(
        info=DatasetInfo("cifar100", 100, (32, 32, 3), static_input=True, synthetic=True),
        model=dict(name="resnet19", residual="standard"),
        tiny=dict(widths=(8, 8, 16), stage_blocks=(1, 1, 1), head_hidden=8),
        tiny_input=(8, 8, 3),
        loss=dict(name="ce", label_smoothing=0.1),
        optimizer=dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4)),
    # The peer-comparison model (benchmarks/peers.py): TET's ResNet-19 exactly as SpikingJelly
    # builds it (64-channel stem, 12,653,988 parameters for 100 classes), trained as
    # _PEER_TRAINING: nothing SpikingJelly does not also compute.
    "resnet19_tet": dict(
        info=DatasetInfo("cifar100", 100, (32, 32, 3), static_input=True, synthetic=True),
        model=dict(name="resnet19", residual="standard", stem_width=64),
        **_PEER_TRAINING,
        tiny=dict(widths=(8, 8, 16), stem_width=4, stage_blocks=(1, 1, 1), head_hidden=8),
        tiny_input=(8, 8, 3)),
    # TET's VGGSNN, trained as _PEER_TRAINING (peers benchmark).
    "vggsnn_tet": dict(
        info=DatasetInfo("cifar10_dvs", 10, (48, 48, 2), static_input=False, synthetic=True),
        model=dict(name="vggsnn"),
        **_PEER_TRAINING,
        tiny=dict(layout=(8, 8, "A", 8, 8, "A", 8, 8, "A", 8, 8, "A")),
        tiny_input=(16, 16, 2)),
    "vggsnn": dict(
        info=DatasetInfo("cifar10_dvs", 10, (48, 48, 2), static_input=False, synthetic=True),
        model=dict(name="vggsnn"),
        tiny=dict(layout=(8, 8, "A", 8, 8, "A", 8, 8, "A", 8, 8, "A")),
        tiny_input=(16, 16, 2),
        loss=dict(name="tet", tet_lambda=1e-3, tet_phi=1.0),
        optimizer=dict(name="adamw", learning_rate=1e-3)),
    "spikformer": dict(
        info=DatasetInfo("cifar10", 10, (32, 32, 3), static_input=True, synthetic=True),
        model=dict(name="spikformer", embed_dim=384, depth=4, num_heads=12, mlp_ratio=4.0,
                   patch_size=4, attention="ssa"),
        tiny=dict(embed_dim=16, depth=1, num_heads=2),
        tiny_input=(8, 8, 3),
        loss=dict(name="ce", label_smoothing=0.1),
        optimizer=dict(name="adamw", learning_rate=5e-4, weight_decay=6e-2)),
}


# What ``python -m benchmarks.run`` measures by default (resnet19_tet is the peers' model).
DEFAULT_MODELS = ("resnet19", "vggsnn", "spikformer")


def dataset_info(case: Case) -> DatasetInfo:
  spec = BENCH_MODELS[case.model]
  info = spec["info"]
  if case.tiny:
    info = dataclasses.replace(info, input_shape=spec["tiny_input"])
  return info


def case_config(case: Case) -> ml_collections.ConfigDict:
  spec = BENCH_MODELS[case.model]
  c = config_schema.base_config()
  c.dataset = spec["info"].name
  c.num_steps = case.num_steps
  for k, v in dict(spec["model"], **(spec["tiny"] if case.tiny else {})).items():
    setattr(c.model, k, v)
  c.model.remat = case.remat
  neuron = dict(spec.get("neuron", dict(name="cf", surrogate_mode="per_step")))
  c.neuron = config_schema.neuron_config(neuron.pop("name"), **neuron)
  if case.ann:
    c.neuron.activation = "relu"
  c.loss.pn_weight = spec.get("pn_weight", 1e-3)
  for k, v in spec["loss"].items():
    setattr(c.loss, k, v)
  for k, v in spec["optimizer"].items():
    setattr(c.optimizer, k, v)
  c.batch_size = case.batch
  c.compute_dtype = case.dtype
  return c
