"""Spiking VGGs: VGGSNN (TET, event frames 2x48x48) and a CIFAR VGG-11.

Contract (METHOD.md §6): NHWC; static input ``[B, H, W, C]`` (the first conv runs once and
its result is repeated over T: the encoder) or events ``[T, B, H, W, C]`` (one frame per
step, the VGGSNN default); output ``(logits_TBK, aux[L, T])``, one aux row per spiking layer.

``layout`` is a sequence of conv widths (``conv3x3 -> BN -> neuron``) and ``"A"`` (2x2 average
pool); then flatten, ``len(hidden)`` x ``FC -> BN -> neuron`` and ``FC classes``. The
classifier sees ``H/2^p x W/2^p x C_last`` with ``p`` pools, so H and W must be multiples of
``2^p`` (checked in ``__init__``). ``remat`` (``remat.REMATS``) checkpoints each
``conv -> BN -> neuron`` (and FC) unit and/or each neuron.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from cfsnn_jax.errors import UserError
from cfsnn_jax.neuron.layers import NeuronFactory, collect_aux, per_step
from cfsnn_jax.models.common import (TimeBatchNorm, bn_neuron, check_hwc, check_model_input, conv,
                                     init_model, layer_bn_neuron, to_time_major)
from cfsnn_jax.neuron.remat import remat_block

POOL = "A"
VGGSNN_LAYOUT = (64, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL)
VGG11_LAYOUT = (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL)


class SpikingVGG(nnx.Module):

  def __init__(self, *, input_shape: Sequence[int], num_classes: int, neuron: NeuronFactory,
               layout: Sequence[int | str], hidden: Sequence[int] = (),
               static_input: bool = True, per_step_bn: bool = False, remat: str = "none",
               rngs: nnx.Rngs):
    layout = tuple(layout)
    bad = [v for v in layout if v != POOL and not (isinstance(v, int) and v > 0)]
    if bad or not layout or layout[0] == POOL:
      raise UserError(f"vgg layout must start with a conv width and hold positive ints or "
                      f"{POOL!r}, got {layout}")
    scale = 2 ** layout.count(POOL)
    h, w, c = check_hwc("vgg", input_shape, scale, f"{layout.count(POOL)} pooling stages")
    neuron = init_model(self, neuron=neuron, remat=remat, static_input=static_input,
                        input_shape=input_shape)
    T = self.num_steps
    self.layout = layout
    convs, norms, neurons = [], [], []
    ch = c
    for v in layout:
      if v == POOL:
        continue
      convs.append(conv(ch, v, (3, 3), rngs=rngs))
      norms.append(TimeBatchNorm(v, T, per_step=per_step_bn, rngs=rngs))
      neurons.append(neuron())
      ch = v
    self.convs, self.norms, self.neurons = nnx.List(convs), nnx.List(norms), nnx.List(neurons)
    dims = [(h // scale) * (w // scale) * ch] + list(hidden)
    self.fcs = nnx.List([nnx.Linear(a, b, use_bias=False, rngs=rngs)
                         for a, b in zip(dims[:-1], dims[1:])])
    self.fc_norms = nnx.List([TimeBatchNorm(b, T, per_step=per_step_bn, rngs=rngs)
                              for b in dims[1:]])
    self.fc_neurons = nnx.List([neuron() for _ in dims[1:]])
    self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array):
    T = self.num_steps
    check_model_input("vgg", x, self.input_shape, T, self.static_input)
    wrap = remat_block(self.remat)
    aux = []
    i = 0
    for v in self.layout:
      if v == POOL:
        x = per_step(lambda y: nnx.avg_pool(y, (2, 2), strides=(2, 2)), x)
        continue
      if i == 0 and self.static_input:  # encoder: the first conv runs once on [B, H, W, C]
        x = to_time_major(self.convs[0](x), T, True)
        x, a = wrap(bn_neuron)(self.norms[i], self.neurons[i], x)
      else:
        x, a = wrap(layer_bn_neuron)(self.convs[i], self.norms[i], self.neurons[i], x)
      aux.append(a)
      i += 1
    x = x.reshape(x.shape[:2] + (-1,))
    for fc, bn, neuron in zip(self.fcs, self.fc_norms, self.fc_neurons):
      x, a = wrap(layer_bn_neuron)(fc, bn, neuron, x)
      aux.append(a)
    return per_step(self.head, x), collect_aux(aux)


def vggsnn(*, layout: Sequence[int | str] = VGGSNN_LAYOUT, hidden: Sequence[int] = (),
           **kwargs) -> SpikingVGG:
  """VGGSNN of TET for 2x48x48 event frames: 8 convs, 4 average pools, FC classes."""
  return SpikingVGG(layout=layout, hidden=hidden, **kwargs)


def vgg_cifar(*, layout: Sequence[int | str] = VGG11_LAYOUT, hidden: Sequence[int] = (),
              **kwargs) -> SpikingVGG:
  """VGG-11 for 32x32 images: 8 convs, 5 average pools (1x1x512), FC classes."""
  return SpikingVGG(layout=layout, hidden=hidden, **kwargs)
