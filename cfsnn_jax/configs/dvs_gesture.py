"""DVS128 Gesture (11 classes, official trial split) with VGGSNN, T = 16, TET, CF + LSG + PN.

Command (the original AEDAT 3.1 recordings, label CSVs and trials_to_train/test.txt under
data_dir)::

  python -m cfsnn_jax.main --config=configs/dvs_gesture.py --workdir=/runs/gesture \\
      --config.data_dir=/data/DvsGesture

Recipe: frames resized 128 -> 48 so the CIFAR10-DVS VGGSNN applies unchanged; TET lambda 1e-3;
AdamW lr 1e-3, cosine, 200 epochs, batch 16 (our choice: the spec names no gesture recipe).
``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax import data
from cfsnn_jax.config import schema as config_schema, recipes


def get_config(arg=None):
  c = recipes.events_vggsnn(
      "dvs_gesture", arg, num_steps=16, batch_size=16, pn_weight=1e-3, frame_size=(48, 48),
      neuron=config_schema.neuron_config("cf", surrogate_mode="per_step"))
  # augmentation recipe "tet_noflip": TET's roll <= 5 px without the flip (hands differ)
  c.data.update(data.event_augment_recipe("tet_noflip"))
  return c
