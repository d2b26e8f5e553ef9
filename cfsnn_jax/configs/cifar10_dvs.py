"""CIFAR10-DVS with VGGSNN, T = 10, TET loss, CF neuron + per-step learnable surrogate + PN.

Command (the original per-class AEDAT 2.0 recordings under data_dir; frames are cached on
the first pass)::

  python -m cfsnn_jax.main --config=configs/cifar10_dvs.py --workdir=/runs/cifar10_dvs \\
      --config.data_dir=/data/CIFAR10-DVS

Recipe source: TET (Deng et al., ICLR 2022) DVS setting as METHOD.md §5 gives it: VGGSNN on
2x48x48 frames, T = 10, TET with lambda 1e-3 and phi 1.0. Optimizer not in the spec: AdamW
lr 1e-3, cosine, 200 epochs, batch 32, random flip + shift (data defaults). Split: ours,
published in cfsnn_jax/data/splits (90/10 per class). ``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax import data
from cfsnn_jax.config import schema as config_schema, recipes


def get_config(arg=None):
  c = recipes.events_vggsnn(
      "cifar10_dvs", arg, num_steps=10, batch_size=32, pn_weight=1e-3,
      neuron=config_schema.neuron_config("cf", surrogate_mode="per_step"))
  # augmentation recipe "tet" (TET's CIFAR10-DVS code): flip p = 0.5, then roll <= 5 px
  c.data.update(data.event_augment_recipe("tet"))
  return c
