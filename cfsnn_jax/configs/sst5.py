"""SST-5 fine-grained sentiment: spiking text Transformer, CF neuron + per-step LSG + PN.

Command (the original Stanford Sentiment Treebank PTB tree files train.txt, dev.txt, test.txt)::

  python -m cfsnn_jax.main --config=configs/sst5.py --workdir=/runs/sst5 \\
      --config.data_dir=/data/sst

Recipe (our choice; the spec names the model only): word-level vocabulary from the training
split, max length 64, learned embedding 256, 4 spiking encoder blocks, 8 heads, mean over
tokens and time; T = 4; AdamW lr 5e-4, weight decay 1e-2, cosine, 20 epochs, batch 64.
Labels are the root labels of the PTB trees (5 classes); the test file is the test split.
``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax.config import recipes


def get_config(arg=None):
  return recipes.sst_text_transformer("sst5", arg)
