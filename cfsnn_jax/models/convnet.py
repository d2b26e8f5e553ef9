"""Small spiking conv net for 28x28 / 32x32 inputs (the embedded ``mnist5k`` default).

``[Conv3x3 -> BN(T*B) -> neuron -> AvgPool2] x len(channels) -> Linear -> BN -> neuron ->
Linear``. NHWC layout; static input ``[B, H, W, C]`` or events ``[T, B, H, W, C]``; output
``(logits_TBK, aux[L, T])``.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from cfsnn_jax.neuron.layers import NeuronFactory, collect_aux, per_step
from cfsnn_jax.models.common import (TimeBatchNorm, bn_neuron, check_hwc, check_model_input, conv,
                                     init_model, layer_bn_neuron, to_time_major)
from cfsnn_jax.neuron.remat import remat_block


class SpikingConvNet(nnx.Module):

  def __init__(self, *, input_shape: Sequence[int], num_classes: int,
               channels: Sequence[int], hidden: int, neuron: NeuronFactory,
               static_input: bool = True, per_step_bn: bool = False, remat: str = "none",
               rngs: nnx.Rngs):
    h, w, c = check_hwc("convnet", input_shape, 2 ** len(channels),
                        f"{len(channels)} pooling stages")
    neuron = init_model(self, neuron=neuron, remat=remat, static_input=static_input,
                        input_shape=input_shape)
    T = self.num_steps
    chans = [c] + list(channels)
    self.convs = nnx.List([conv(a, b, (3, 3), rngs=rngs)
                           for a, b in zip(chans[:-1], chans[1:])])
    self.norms = nnx.List([TimeBatchNorm(b, T, per_step=per_step_bn, rngs=rngs)
                           for b in chans[1:]])
    self.neurons = nnx.List([neuron() for _ in chans[1:]])
    flat = (h // 2 ** len(channels)) * (w // 2 ** len(channels)) * chans[-1]
    self.fc = nnx.Linear(flat, hidden, use_bias=False, rngs=rngs)
    self.fc_norm = TimeBatchNorm(hidden, T, per_step=per_step_bn, rngs=rngs)
    self.fc_neuron = neuron()
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array):
    T = self.num_steps
    check_model_input("convnet", x, self.input_shape, T, self.static_input)
    wrap = remat_block(self.remat)
    aux = []
    for i, (conv, bn, neuron) in enumerate(zip(self.convs, self.norms, self.neurons)):
      if i == 0:  # encoder: the first conv runs once on [B, H, W, C] for static input
        x = conv(x) if self.static_input else per_step(conv, x)
        x, a = wrap(bn_neuron)(bn, neuron, to_time_major(x, T, self.static_input))
      else:
        x, a = wrap(layer_bn_neuron)(conv, bn, neuron, x)
      aux.append(a)
      x = per_step(lambda y: nnx.avg_pool(y, (2, 2), strides=(2, 2)), x)
    x = x.reshape(x.shape[:2] + (-1,))
    x, a = wrap(layer_bn_neuron)(self.fc, self.fc_norm, self.fc_neuron, x)
    aux.append(a)
    return per_step(self.head, x), collect_aux(aux)
