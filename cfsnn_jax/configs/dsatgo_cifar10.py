"""DS-ATGO on CIFAR-10: ResNet-19 SEW-ADD, T = 2, the paper's recipe (METHOD.md §4).

Command::

  python -m cfsnn_jax.main --config=configs/dsatgo_cifar10.py --workdir=/runs/dsatgo_c10 \\
      --config.data_dir=/data/cifar [--config.neuron.dynamic_stat=threshold]  # paper's Delta

Recipe (METHOD.md §4, from the paper and its official code): PLIF (decay init 0.2), hard
reset to 0, gradient through the reset, adaptive threshold theta_t = mean(H_t) + std(H_t)
over the global batch with an EMA (m = 0.1) used at evaluation, rectangular surrogate of
dynamic width (statistic: the official code's std by default); SGD lr 0.1 momentum 0.9,
weight decay 1e-4, cosine, 400 epochs, batch 100, label smoothing 0.1, crop + flip +
AutoAugment. Reported: 96.91 +- 0.12 %. ``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax.config import recipes


def get_config(arg=None):
  return recipes.dsatgo_cifar_resnet19("cifar10", arg)
