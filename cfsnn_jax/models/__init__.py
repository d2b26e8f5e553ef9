"""Model registry: spiking models picked by ``config.model.name``.

``build_model(model_cfg, neuron, *, input_shape, num_classes, static_input, rngs)`` looks up
the name, passes the model's own fields of ``model_cfg`` (everything but ``name``) as keyword
arguments and returns the NNX module. Unknown names fail with one line naming the choices.
Families register themselves here; each lives in its own module.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from flax import nnx

from cfsnn_jax.config.choices import MODEL_NAMES
from cfsnn_jax.errors import unknown_choice
from cfsnn_jax.neuron.layers import NeuronFactory
from cfsnn_jax.neuron.remat import REMATS, validate_remat  # noqa: F401  (re-exported)
from cfsnn_jax.models.convnet import SpikingConvNet
from cfsnn_jax.models.mlp import SpikingMLP
from cfsnn_jax.models.resnet import resnet18, resnet19, resnet20
from cfsnn_jax.models.transformer import Spikformer, SpikingTextTransformer
from cfsnn_jax.models.vgg import vgg_cifar, vggsnn

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "mlp": SpikingMLP,
    "convnet": SpikingConvNet,
    "resnet19": resnet19,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "vggsnn": vggsnn,
    "vgg_cifar": vgg_cifar,
    "spikformer": Spikformer,
    "text_transformer": SpikingTextTransformer,
}

assert tuple(MODELS) == MODEL_NAMES


def validate_model_name(name: str) -> None:
  if name not in MODELS:
    raise unknown_choice("model", name, sorted(MODELS))


def build_model(model_cfg: Any, neuron: NeuronFactory, *, input_shape: Sequence[int],
                num_classes: int, static_input: bool, rngs: nnx.Rngs,
                vocab_size: int = 0) -> nnx.Module:
  kwargs = dict(model_cfg)
  name = kwargs.pop("name")
  validate_model_name(name)
  if vocab_size:  # text models take the vocabulary size from the dataset
    kwargs["vocab_size"] = vocab_size
  return MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, neuron=neuron,
                      static_input=static_input, rngs=rngs, **kwargs)


def count_params(model: nnx.Module) -> int:
  """Number of trainable scalars (``nnx.Param``)."""
  import jax
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
