"""DVS128 Gesture (11 classes, official trial split) with VGGSNN, T = 16, TET, CF + LSG + PN.

Command (the original AEDAT 3.1 recordings, label CSVs and trials_to_train/test.txt under
data_dir)::

  python -m cfsnn_jax.main --config=configs/dvs_gesture.py --workdir=/runs/gesture \\
      --config.data_dir=/data/DvsGesture

Recipe: frames resized 128 -> 48 so the CIFAR10-DVS VGGSNN applies unchanged; TET lambda 1e-3;
AdamW lr 1e-3, cosine, 200 epochs, batch 16 (our choice: the spec names no gesture recipe).
``:tiny`` runs 3 steps on a fixture.
"""

from cfsnn_jax import config_schema, data


def get_config(arg=None):
  c = config_schema.base_config()
  c.dataset = "dvs_gesture"
  c.data = data.default_data_config("dvs_gesture")
  c.data.frame_size = (48, 48)
  c.num_steps = 16  # T (frames)
  c.model.name = "vggsnn"
  c.model.per_step_bn = False
  c.neuron = config_schema.neuron_config("cf", surrogate_mode="per_step")
  c.loss.name = "tet"
  c.loss.pn_weight = 1e-3
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 16
  c.num_epochs = 200
  if arg == "tiny":
    config_schema.make_tiny(c)
    c.num_steps = 4
    c.data.frame_size = (16, 16)
    c.model.layout = (4, "A", 8, "A")
  return c
