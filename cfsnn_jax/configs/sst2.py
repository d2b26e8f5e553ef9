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

from cfsnn_jax.config import recipes


def get_config(arg=None):
  return recipes.sst_text_transformer("sst2", arg)
