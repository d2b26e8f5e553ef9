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

from cfsnn_jax import config_schema, data


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "cifar10"
  c.data = data.default_data_config("cifar10")
  c.num_steps = 4  # T: 2, 4 or 6 in the paper's table
  c.model.name = "resnet19"
  c.model.residual = "standard"  # standard | sew_add
  c.model.per_step_bn = False  # BN over T*B jointly
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.label_smoothing = 0.1
  c.loss.pn_weight = 1e-3
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.batch_size = 128
  c.num_epochs = 300
  c.eval_every_steps = 0  # once per epoch
  c.checkpoint_every_steps = 0  # once per epoch
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.model.widths = (8, 16, 16)
    c.model.head_hidden = 16
    c.data.autoaugment = True  # keep the full augmentation path in the tiny run
  return c
