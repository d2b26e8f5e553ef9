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

from cfsnn_jax import config_schema, data


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "cifar10"
  c.data = data.default_data_config("cifar10")
  c.num_steps = 2  # T
  c.model.name = "resnet19"
  c.model.residual = "sew_add"  # SEW-ADD residuals
  c.model.per_step_bn = False
  c.neuron = config_schema.neuron_config("dsatgo", dynamic_stat="std")
  c.loss.label_smoothing = 0.1
  c.loss.pn_weight = 0.0  # DS-ATGO alone; set 1e-3 to combine with the PN loss
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.batch_size = 100
  c.num_epochs = 400
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.model.widths = (8, 16, 16)
    c.model.head_hidden = 16
  return c
