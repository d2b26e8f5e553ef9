"""The paper's tables as sweeps: data, not code.

Each sweep is ``{"config": path, "description": str, "points": [overrides, ...]}`` where an
override dict maps a dotted config field to a value (``{"num_steps": 2, "seed": 1}``).
``experiments/launch.py`` turns a sweep into one ``python -m cfsnn_jax.main`` command per
point (locally, or one ``gcloud ... tpu-vm ssh --worker=all`` line per point on a TPU pod).
Seeds 0, 1, 2 for every point: the papers report mean +- std over three runs.
"""

from __future__ import annotations

import itertools

SEEDS = (0, 1, 2)


def _grid(**axes):
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


SWEEPS = {
    "cifar10_T": {
        "config": "configs/cifar10.py",
        "description": "CF-SNN ResNet-19 on CIFAR-10 at T = 2, 4, 6",
        "points": _grid(num_steps=(2, 4, 6), seed=SEEDS),
    },
    "cifar100_T": {
        "config": "configs/cifar100.py",
        "description": "CF-SNN ResNet-19 on CIFAR-100 at T = 2, 4, 6",
        "points": _grid(num_steps=(2, 4, 6), seed=SEEDS),
    },
    "cifar10_dvs": {
        "config": "configs/cifar10_dvs.py",
        "description": "VGGSNN on CIFAR10-DVS, T = 10, TET",
        "points": _grid(seed=SEEDS),
    },
    "dvs_gesture": {
        "config": "configs/dvs_gesture.py",
        "description": "DVS128 Gesture",
        "points": _grid(seed=SEEDS),
    },
    "sst": {
        "config": "configs/sst2.py",
        "description": "Spiking text Transformer on SST-2",
        "points": _grid(seed=SEEDS),
    },
    "sst5": {
        "config": "configs/sst5.py",
        "description": "Spiking text Transformer on SST-5",
        "points": _grid(seed=SEEDS),
    },
    "tiny_imagenet": {
        "config": "configs/tiny_imagenet.py",
        "description": "ResNet-18 on Tiny-ImageNet-200 (the paper's ImageNet-200)",
        "points": _grid(seed=SEEDS),
    },
    "cifar100_components": {
        "config": "configs/cifar100.py",
        "description": "CIFAR-100 ablation at T = 4: neuron x surrogate mode x PN loss",
        "points": _grid(**{"neuron.name": ("lif", "cf", "cf_signed"),
                           "neuron.surrogate_mode": ("fixed", "per_step"),
                           "loss.pn_weight": (0.0, 1e-3), "seed": (0,)}),
    },
    "dsatgo_cifar": {
        "config": "configs/dsatgo_cifar10.py",
        "description": "DS-ATGO ResNet-19 SEW-ADD, T = 2, width statistic std vs threshold",
        "points": _grid(**{"neuron.dynamic_stat": ("std", "threshold"), "seed": SEEDS}),
    },
}


def get_sweep(name: str) -> dict:
  if name not in SWEEPS:
    raise ValueError(f"unknown sweep {name!r}; valid choices: {', '.join(sorted(SWEEPS))}")
  return SWEEPS[name]
