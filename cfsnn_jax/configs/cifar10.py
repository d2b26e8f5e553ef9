"""CF-SNN on CIFAR-10: ResNet-19, CF neuron + per-step learnable surrogate + PN loss.

Command (GPU box or TPU pod; data from a tfds data dir or the original python tarball)::

  python -m cfsnn_jax.main --config=configs/cifar10.py --workdir=/runs/cifar10_T4 \\
      --config.data_dir=/data/cifar --config.num_steps=4      # T = 2, 4 or 6

Recipe source: the CF-SNN paper's training recipe is not available (METHOD.md: abstract and
result table only), so this uses the full CIFAR recipe METHOD.md §4 gives (DS-ATGO's):
SGD lr 0.1 momentum 0.9, weight decay 1e-4 (masked: not on BN, biases, surrogate or decay
parameters), cosine schedule, label smoothing 0.1, random crop (pad 4) + flip + AutoAugment;
400 epochs there, 300 here (the TET ResNet-19 budget). Batch 128 (divisible by 8 devices;
DS-ATGO's 100 is kept in its own configs). ``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax.config import recipes


def get_config(arg=None):
  return recipes.cifar_resnet19("cifar10", arg)
