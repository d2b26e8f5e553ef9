"""Small spiking conv net for 28x28 / 32x32 inputs (the embedded ``mnist5k`` default).

``[Conv3x3 -> BN(T*B) -> neuron -> AvgPool2] x len(channels) -> Linear -> BN -> neuron ->
Linear``. NHWC layout; static input ``[B, H, W, C]`` or events ``[T, B, H, W, C]``; output
``(logits_TBK, aux[L, T])``.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from cfsnn_jax.layers import NeuronFactory, collect_aux, fold, unfold
from cfsnn_jax.models.common import (TimeBatchNorm, bn_neuron, layer_bn_neuron, remat_block,
                                     remat_neuron, to_time_major)


class SpikingConvNet(nnx.Module):

  def __init__(self, *, input_shape: Sequence[int], num_classes: int,
               channels: Sequence[int], hidden: int, neuron: NeuronFactory,
               static_input: bool = True, per_step_bn: bool = False, remat: str = "none",
               rngs: nnx.Rngs):
    if len(input_shape) != 3:
      raise ValueError(f"convnet needs HWC input, got input shape {tuple(input_shape)}")
    h, w, c = input_shape
    if h % (2 ** len(channels)) or w % (2 ** len(channels)):
      raise ValueError(f"convnet with {len(channels)} pooling stages needs H and W divisible "
                       f"by {2 ** len(channels)}, got {h}x{w}")
    neuron = remat_neuron(remat, neuron)
    T = neuron.num_steps
    self.num_steps = T
    self.remat = remat
    self.static_input = static_input
    chans = [c] + list(channels)
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), use_bias=False, rngs=rngs)
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
    wrap = remat_block(self.remat)
    aux = []
    for i, (conv, bn, neuron) in enumerate(zip(self.convs, self.norms, self.neurons)):
      if i == 0:  # encoder: the first conv runs once on [B, H, W, C] for static input
        x = conv(x) if self.static_input else unfold(conv(fold(x)), T)
        x, a = wrap(bn_neuron)(bn, neuron, to_time_major(x, T, self.static_input))
      else:
        x, a = wrap(layer_bn_neuron)(conv, bn, neuron, x)
      aux.append(a)
      x = unfold(nnx.avg_pool(fold(x), (2, 2), strides=(2, 2)), T)
    x = x.reshape(x.shape[:2] + (-1,))
    x, a = wrap(layer_bn_neuron)(self.fc, self.fc_norm, self.fc_neuron, x)
    aux.append(a)
    return unfold(self.head(fold(x)), T), collect_aux(aux)
