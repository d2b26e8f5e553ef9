"""Spikformer-4-384 on CIFAR-10 with the CF neuron + per-step learnable surrogate + PN loss.

Command::

  python -m cfsnn_jax.main --config=configs/cifar10_spikformer.py --workdir=/runs/spikformer \\
      --config.data_dir=/data/cifar [--config.model.attention=sdsa]   # Spike-driven attention

Recipe source: Spikformer (Zhou et al., ICLR 2023) CIFAR setting: AdamW lr 5e-4, weight decay
6e-2, batch 64, cosine with warm-up, T = 4, crop + flip (+ AutoAugment), label smoothing 0.1;
we run 300 epochs with 20 warm-up epochs (~15.6k steps at batch 64 = 20 epochs).
``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax import data
from cfsnn_jax.config import schema as config_schema


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "cifar10"
  c.data = data.default_data_config("cifar10")
  c.num_steps = 4  # T
  c.model.name = "spikformer"
  c.model.embed_dim = 384  # Spikformer-4-384
  c.model.depth = 4
  c.model.num_heads = 12
  c.model.mlp_ratio = 4.0
  c.model.patch_size = 4
  c.model.attention = "ssa"  # ssa (Spikformer) | sdsa (Spike-driven Transformer)
  c.model.per_step_bn = False
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.label_smoothing = 0.1
  c.loss.pn_weight = 1e-3
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 5e-4
  c.optimizer.weight_decay = 6e-2
  c.optimizer.warmup_steps = 15620  # 20 epochs at batch 64
  c.batch_size = 64
  c.num_epochs = 300
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.model.embed_dim = 16
    c.model.depth = 1
    c.model.num_heads = 2
    c.data.autoaugment = False
  return c
