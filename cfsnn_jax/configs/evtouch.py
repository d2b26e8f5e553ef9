"""EvTouch-Objects (tactile events: taxel, polarity, time) with a spiking MLP, CF + LSG + PN.

Command (event arrays + ``samples.csv`` index under data_dir, see docs/DATA.md)::

  python -m cfsnn_jax.main --config=configs/evtouch.py --workdir=/runs/evtouch \\
      --config.data_dir=/data/evtouch

Recipe (our choice; the spec names the data only): 39 taxels x 2 polarities binned into
T = 20 frames, MLP 256-256, AdamW lr 1e-3, cosine, 100 epochs, batch 16.
``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax import data
from cfsnn_jax.config import schema as config_schema


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "evtouch"
  c.data = data.default_data_config("evtouch")
  c.num_steps = 20  # T (frames)
  c.model.name = "mlp"
  c.model.hidden = (256, 256)
  c.model.per_step_bn = False
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.pn_weight = 1e-3
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 16
  c.num_epochs = 100
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.num_steps = 4
    c.model.hidden = (16,)
  return c
