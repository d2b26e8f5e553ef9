"""Spiking MLP: [Linear -> BN(T*B) -> neuron] x L -> Linear, for flat or small inputs.

Input ``[B, ...]`` (static, flattened) or ``[T, B, ...]`` (events); output
``(logits_TBK, aux[L, T])``. The first Linear + BN runs once on ``[B, D]`` for static input
and its result is repeated over T (the encoder).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
from flax import nnx

from cfsnn_jax.neuron.layers import NeuronFactory, collect_aux, per_step
from cfsnn_jax.models.common import (TimeBatchNorm, bn_neuron, check_model_input, init_model,
                                     layer_bn_neuron, to_time_major)
from cfsnn_jax.neuron.remat import remat_block


class SpikingMLP(nnx.Module):

  def __init__(self, *, input_shape: Sequence[int], num_classes: int,
               hidden: Sequence[int], neuron: NeuronFactory, static_input: bool = True,
               per_step_bn: bool = False, remat: str = "none", rngs: nnx.Rngs):
    neuron = init_model(self, neuron=neuron, remat=remat, static_input=static_input,
                        input_shape=input_shape)
    dims = [math.prod(input_shape)] + list(hidden)
    self.linears = nnx.List([nnx.Linear(a, b, use_bias=False, rngs=rngs)
                             for a, b in zip(dims[:-1], dims[1:])])
    self.norms = nnx.List([TimeBatchNorm(b, self.num_steps, per_step=per_step_bn, rngs=rngs)
                           for b in dims[1:]])
    self.neurons = nnx.List([neuron() for _ in dims[1:]])
    self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array):
    T = self.num_steps
    check_model_input("mlp", x, self.input_shape, T, self.static_input)
    lead = 1 if self.static_input else 2
    x = x.reshape(x.shape[:lead] + (-1,))
    wrap = remat_block(self.remat)
    aux = []
    for i, (lin, bn, neuron) in enumerate(zip(self.linears, self.norms, self.neurons)):
      if i == 0:  # encoder: the first Linear runs once on [B, D] for static input
        x = lin(x) if self.static_input else per_step(lin, x)
        x, a = wrap(bn_neuron)(bn, neuron, to_time_major(x, T, self.static_input))
      else:
        x, a = wrap(layer_bn_neuron)(lin, bn, neuron, x)
      aux.append(a)
    return per_step(self.head, x), collect_aux(aux)
