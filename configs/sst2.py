"""SST-2 sentiment with the spiking text Transformer, CF neuron + per-step LSG + PN loss.

Command (tfds ``glue/sst2`` prepared in a tfds data dir, or the GLUE ``SST-2/`` TSV files)::

  python -m cfsnn_jax.main --config=configs/sst2.py --workdir=/runs/sst2 \\
      --config.data_dir=/data/glue

Recipe (our choice; the spec names the model only): word-level vocabulary from the training
split, max length 64, learned embedding 256, 4 spiking encoder blocks, 8 heads, mean over
tokens and time; T = 4; AdamW lr 5e-4, weight decay 1e-2, cosine, 20 epochs, batch 64.
The GLUE test split has no labels, so the validation split is the test split.
``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax import config_schema, data


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "sst2"
  c.data = data.default_data_config("sst2")
  c.num_steps = 4  # T
  c.model.name = "text_transformer"
  c.model.max_len = 64  # longest token sequence the model accepts (= data.max_len)
  c.model.embed_dim = 256
  c.model.depth = 4
  c.model.num_heads = 8
  c.model.attention = "ssa"  # ssa | sdsa
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.pn_weight = 1e-3
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 5e-4
  c.optimizer.weight_decay = 1e-2
  c.batch_size = 64
  c.num_epochs = 20
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.data.max_len = 16
    c.model.max_len = 16
    c.model.embed_dim = 16
    c.model.depth = 1
    c.model.num_heads = 2
  return c
