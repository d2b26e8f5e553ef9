"""Tiny-ImageNet-200 (the paper's ImageNet-200) with spiking ResNet-18, CF + LSG + PN.

Command (the original ``tiny-imagenet-200/`` folder under data_dir; val = test split)::

  python -m cfsnn_jax.main --config=configs/tiny_imagenet.py --workdir=/runs/tin \\
      --config.data_dir=/data

Recipe: ResNet-18 with a 3x3 stem, T = 4, SGD lr 0.1 momentum 0.9, weight decay 1e-4, cosine,
label smoothing 0.1, crop (pad 4) + flip, 200 epochs, batch 128 (our choice following the
CIFAR recipe; the spec gives none for ImageNet-200). ``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax import data
from cfsnn_jax.config import schema as config_schema


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "tiny_imagenet"
  c.data = data.default_data_config("tiny_imagenet")
  c.num_steps = 4  # T
  c.model.name = "resnet18"
  c.model.residual = "standard"  # standard | sew_add
  c.model.per_step_bn = False
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.label_smoothing = 0.1
  c.loss.pn_weight = 1e-3
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 1e-4
  c.batch_size = 128
  c.num_epochs = 200
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.model.widths = (8, 8, 16, 16)
  return c
