"""DS-ATGO on CIFAR10-DVS: VGGSNN, T = 10 (METHOD.md §4 neuron; TET DVS loss).

Command::

  python -m cfsnn_jax.main --config=configs/dsatgo_cifar10_dvs.py --workdir=/runs/dsatgo_dvs \\
      --config.data_dir=/data/CIFAR10-DVS

Recipe: the DS-ATGO neuron (PLIF 0.2, hard reset, adaptive threshold + EMA, dynamic
rectangular surrogate, std statistic), VGGSNN on 2x48x48 frames, TET loss (lambda 1e-3) as
in the DVS recipe of METHOD.md §5; AdamW lr 1e-3, cosine, 200 epochs, batch 32 (the spec names
no DVS optimizer). Reported: 83.70 +- 0.41 %. ``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax import data
from cfsnn_jax.config import schema as config_schema, recipes


def get_config(arg=None):
  c = recipes.events_vggsnn(
      "cifar10_dvs", arg, num_steps=10, batch_size=32, pn_weight=0.0,
      neuron=config_schema.neuron_config("dsatgo", dynamic_stat="std"))
  # augmentation recipe "tet" (TET's CIFAR10-DVS code): flip p = 0.5, then roll <= 5 px
  c.data.update(data.event_augment_recipe("tet"))
  return c
