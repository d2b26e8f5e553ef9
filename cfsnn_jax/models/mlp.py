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

from cfsnn_jax.layers import NeuronFactory, collect_aux, fold, unfold
from cfsnn_jax.models.common import (TimeBatchNorm, bn_neuron, layer_bn_neuron, remat_block,
                                     remat_neuron, to_time_major)


class SpikingMLP(nnx.Module):

  def __init__(self, *, input_shape: Sequence[int], num_classes: int,
               hidden: Sequence[int], neuron: NeuronFactory, static_input: bool = True,
               per_step_bn: bool = False, remat: str = "none", rngs: nnx.Rngs):
    neuron = remat_neuron(remat, neuron)
    self.num_steps = neuron.num_steps
    self.remat = remat
    self.static_input = static_input
    dims = [math.prod(input_shape)] + list(hidden)
    self.linears = nnx.List([nnx.Linear(a, b, use_bias=False, rngs=rngs)
                             for a, b in zip(dims[:-1], dims[1:])])
    self.norms = nnx.List([TimeBatchNorm(b, self.num_steps, per_step=per_step_bn, rngs=rngs)
                           for b in dims[1:]])
    self.neurons = nnx.List([neuron() for _ in dims[1:]])
    self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array):
    T = self.num_steps
    lead = 1 if self.static_input else 2
    x = x.reshape(x.shape[:lead] + (-1,))
    wrap = remat_block(self.remat)
    aux = []
    for i, (lin, bn, neuron) in enumerate(zip(self.linears, self.norms, self.neurons)):
      if i == 0:  # encoder: the first Linear runs once on [B, D] for static input
        x = lin(x) if self.static_input else unfold(lin(fold(x)), T)
        x, a = wrap(bn_neuron)(bn, neuron, to_time_major(x, T, self.static_input))
      else:
        x, a = wrap(layer_bn_neuron)(lin, bn, neuron, x)
      aux.append(a)
    return unfold(self.head(fold(x)), T), collect_aux(aux)
