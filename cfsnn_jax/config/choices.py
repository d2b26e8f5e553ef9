"""The valid names of every registry the config picks from, importable without jax or flax.

Contract: each tuple is the list of choices one config field accepts, in the order error
messages list them; the registry that implements the names imports its tuple from here and
checks (at import) that its keys are exactly these, so the two cannot drift apart. The config
layer (``config_schema``) validates against these tuples without importing jax. Dataset names
live with the data registry (``cfsnn_jax.data.DATASETS``, itself jax-free); neuron names and
fields in ``neuron_spec``.
"""

from __future__ import annotations

MODEL_NAMES = ("mlp", "convnet", "resnet19", "resnet18", "resnet20", "vggsnn", "vgg_cifar",
               "spikformer", "text_transformer")  # cfsnn_jax.models.MODELS
REMAT_NAMES = ("none", "neuron", "block", "block_full")  # cfsnn_jax.neuron.remat.REMATS
TASK_LOSSES = ("ce", "tet")  # cfsnn_jax.training.losses.task_loss
PN_VARIANTS = ("mean", "sign")  # cfsnn_jax.training.losses.pn_loss
OPTIMIZERS = ("adamw", "sgd")  # cfsnn_jax.training.optim.make_optimizer
SCHEDULES = ("constant", "cosine")  # cfsnn_jax.training.optim.learning_rate_schedule
COMPUTE_DTYPES = ("bfloat16", "float32")  # config.compute_dtype
