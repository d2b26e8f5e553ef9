"""Spiking ResNets from one BasicBlock: ResNet-19 (TET), ResNet-20 (CIFAR), ResNet-18.

Contract (METHOD.md §6): NHWC; static input ``[B, H, W, C]`` (the stem conv runs once and its
result is repeated over T: the encoder) or events ``[T, B, H, W, C]``; output
``(logits_TBK, aux[L, T])`` with one aux row per spiking layer, in forward order.

Layout: stem ``conv3x3 -> BN -> neuron`` (optional stride and 2x2 max pool), then stages of
BasicBlocks (``conv3x3 -> BN -> neuron -> conv3x3 -> BN``), global average pool, an optional
``FC hidden -> neuron`` and ``FC classes``. The shortcut is the identity, or ``conv1x1 + BN``
where the shape changes. Residual forms:
- ``standard`` (TET / tdBN): ``neuron(BN(conv(...)) + shortcut(x))``.
- ``sew_add`` (SEW ResNet ADD): ``neuron(BN(conv(...))) + shortcut(x)``; a downsampling
  shortcut has its own neuron (``neuron(BN(conv1x1(x)))``), so both summands are spikes and
  the block output is an integer count.
Every stride must divide the feature map exactly, so H and W must be multiples of the total
stride; anything else fails in ``__init__`` with one line. ``remat`` (``remat.REMATS``)
checkpoints each BasicBlock (and the stem's BN + neuron) and/or each neuron.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cfsnn_jax.errors import UserError, unknown_choice
from cfsnn_jax.neuron.layers import NeuronFactory, collect_aux, per_step
from cfsnn_jax.models.common import (TimeBatchNorm, bn_neuron, call_module, check_hwc,
                                     check_model_input, conv, init_model, to_time_major)
from cfsnn_jax.neuron.remat import remat_block

RESIDUALS = ("standard", "sew_add")


class BasicBlock(nnx.Module):
  """Two 3x3 convs with a shortcut; ``__call__(x_TB) -> (y_TB, [NeuronStats, ...])``."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, *, neuron: NeuronFactory,
               residual: str, per_step_bn: bool, rngs: nnx.Rngs):
    T = neuron.num_steps
    self.residual = residual
    self.conv1 = conv(in_ch, out_ch, (3, 3), strides=stride, rngs=rngs)
    self.bn1 = TimeBatchNorm(out_ch, T, per_step=per_step_bn, rngs=rngs)
    self.neuron1 = neuron()
    self.conv2 = conv(out_ch, out_ch, (3, 3), rngs=rngs)
    self.bn2 = TimeBatchNorm(out_ch, T, per_step=per_step_bn, rngs=rngs)
    self.neuron2 = neuron()
    if stride != 1 or in_ch != out_ch:
      self.down_conv = conv(in_ch, out_ch, (1, 1), strides=stride, rngs=rngs)
      self.down_bn = TimeBatchNorm(out_ch, T, per_step=per_step_bn, rngs=rngs)
      self.down_neuron = neuron() if residual == "sew_add" else None
    else:
      self.down_conv = self.down_bn = self.down_neuron = None

  def __call__(self, x_TB: jax.Array):
    aux = []
    y, a = self.neuron1(self.bn1(per_step(self.conv1, x_TB)))
    aux.append(a)
    y = self.bn2(per_step(self.conv2, y))
    shortcut = x_TB
    if self.down_conv is not None:
      shortcut = self.down_bn(per_step(self.down_conv, x_TB))
    if self.residual == "standard":
      y, a = self.neuron2(y + shortcut)
      aux.append(a)
      return y, aux
    y, a = self.neuron2(y)
    aux.append(a)
    if self.down_neuron is not None:
      shortcut, a = self.down_neuron(shortcut)
      aux.append(a)
    return y + shortcut, aux


class SpikingResNet(nnx.Module):
  """Stem + BasicBlock stages + global average pool + (FC hidden + neuron) + FC classes."""

  def __init__(self, *, input_shape: Sequence[int], num_classes: int, neuron: NeuronFactory,
               stage_blocks: Sequence[int], widths: Sequence[int], strides: Sequence[int],
               stem_width: int = 0, stem_stride: int = 1, stem_pool: bool = False,
               head_hidden: int = 0, residual: str = "standard", static_input: bool = True,
               per_step_bn: bool = False, remat: str = "none", rngs: nnx.Rngs):
    if residual not in RESIDUALS:
      raise unknown_choice("residual", residual, RESIDUALS)
    if not len(stage_blocks) == len(widths) == len(strides) or not widths:
      raise UserError(f"resnet needs one width and stride per stage, got stage_blocks="
                      f"{tuple(stage_blocks)}, widths={tuple(widths)}, strides={tuple(strides)}")
    total = stem_stride * (2 if stem_pool else 1) * math.prod(strides)
    _, _, c = check_hwc("resnet", input_shape, total, f"total stride {total}")
    neuron = init_model(self, neuron=neuron, remat=remat, static_input=static_input,
                        input_shape=input_shape)
    T = self.num_steps
    self.stem_pool = stem_pool
    stem_width = stem_width or widths[0]
    self.stem_conv = conv(c, stem_width, (3, 3), strides=stem_stride, rngs=rngs)
    self.stem_bn = TimeBatchNorm(stem_width, T, per_step=per_step_bn, rngs=rngs)
    self.stem_neuron = neuron()
    blocks = []
    in_ch = stem_width
    for n, width, stride in zip(stage_blocks, widths, strides):
      for i in range(n):
        blocks.append(BasicBlock(in_ch, width, stride if i == 0 else 1, neuron=neuron,
                                 residual=residual, per_step_bn=per_step_bn, rngs=rngs))
        in_ch = width
    self.blocks = nnx.List(blocks)
    if head_hidden:
      self.fc = nnx.Linear(in_ch, head_hidden, rngs=rngs)
      self.fc_neuron = neuron()
      in_ch = head_hidden
    else:
      self.fc = self.fc_neuron = None
    self.head = nnx.Linear(in_ch, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array):
    T = self.num_steps
    check_model_input("resnet", x, self.input_shape, T, self.static_input)
    if self.static_input:  # encoder: the stem conv runs once on [B, H, W, C]
      x = to_time_major(self.stem_conv(x), T, True)
    else:
      x = per_step(self.stem_conv, x)
    wrap = remat_block(self.remat)
    x, a = wrap(bn_neuron)(self.stem_bn, self.stem_neuron, x)
    aux = [a]
    if self.stem_pool:
      x = per_step(lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2)), x)
    for block in self.blocks:
      x, block_aux = wrap(call_module)(block, x)
      aux.extend(block_aux)
    x = jnp.mean(x, axis=(2, 3))  # global average pool: [T, B, C]
    if self.fc is not None:
      x, a = self.fc_neuron(per_step(self.fc, x))
      aux.append(a)
    return per_step(self.head, x), collect_aux(aux)


def resnet19(*, stage_blocks: Sequence[int] = (3, 3, 2), widths: Sequence[int] = (128, 256, 512),
             strides: Sequence[int] = (1, 2, 2), head_hidden: int = 256,
             stem_width: int | None = None, **kwargs) -> SpikingResNet:
  """ResNet-19 as in TET (Deng et al., 2022, ``models/resnet_models.py``): stem 64 (``None``:
  half the first stage's width), stages [3, 3, 2] of widths 128-256-512 (the first block's
  shortcut is conv1x1 + BN, 64 -> 128), FC 256 + neuron: 12,653,988 parameters for 100
  classes with parameter-free LIF neurons (docs/MODELS.md). ``stem_width=128`` is the DS-ATGO
  code's variant (identity shortcut in the first block)."""
  stem_width = widths[0] // 2 if stem_width is None else stem_width
  return SpikingResNet(stage_blocks=stage_blocks, widths=widths, strides=strides,
                       head_hidden=head_hidden, stem_width=stem_width, **kwargs)


def resnet20(*, stage_blocks: Sequence[int] = (3, 3, 3), widths: Sequence[int] = (16, 32, 64),
             strides: Sequence[int] = (1, 2, 2), head_hidden: int = 0,
             **kwargs) -> SpikingResNet:
  """ResNet-20 for CIFAR (He et al., 2016): stem 16, stages [3, 3, 3] of widths 16-32-64."""
  return SpikingResNet(stage_blocks=stage_blocks, widths=widths, strides=strides,
                       head_hidden=head_hidden, **kwargs)


def resnet18(*, stage_blocks: Sequence[int] = (2, 2, 2, 2),
             widths: Sequence[int] = (64, 128, 256, 512), strides: Sequence[int] = (1, 2, 2, 2),
             head_hidden: int = 0, **kwargs) -> SpikingResNet:
  """ResNet-18 with a 3x3 stem (Tiny-ImageNet); for 224x224 ImageNet pass ``stem_stride=2,
  stem_pool=True`` (the 3x3 analogue of the 7x7/2 + max-pool stem)."""
  return SpikingResNet(stage_blocks=stage_blocks, widths=widths, strides=strides,
                       head_hidden=head_hidden, **kwargs)
