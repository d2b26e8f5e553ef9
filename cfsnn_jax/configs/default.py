"""Embedded default: CF neuron + per-step learnable surrogate + PN loss on ``digits``.

Command (no download, CPU is enough)::

  python -m cfsnn_jax.main --workdir=/tmp/cfsnn_default

Recipe: spiking MLP 64-256-256-10 with joint BN, T = 4, CF neuron (LIF charge tau 2,
D = 4 levels, unsigned, soft reset), sigmoid surrogate alpha_0 = 4 learned per step, CE on
time-mean logits + 1e-3 PN loss (mean variant), AdamW lr 3e-3 cosine, batch 64, 40 epochs,
seed 0. ``:tiny`` runs a few steps (CI).
"""

from cfsnn_jax.config import schema as config_schema


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "digits"  # embedded, scikit-learn
  c.num_steps = 4  # T
  c.model.name = "mlp"
  c.model.hidden = (256, 256)  # hidden widths
  c.model.per_step_bn = False  # BN over T*B jointly
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.pn_weight = 1e-3  # PN balanced loss weight
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-3
  c.batch_size = 64
  c.num_epochs = 40
  if arg == "tiny":
    c.model.hidden = (32,)
    c.num_train_steps = 6
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.progress_bar = False
  return c
