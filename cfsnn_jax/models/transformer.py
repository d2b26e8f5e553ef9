"""Spiking Transformers: Spikformer (images / events) and a text classifier (token ids).

Contract (METHOD.md §6): tokens are ``x_TBND`` (time-major, N tokens of width D). Linear
layers and BN act on all leading axes at once (BN normalises over ``T*B*N`` per feature, or
``B*N`` per step with ``per_step_bn``); only the neurons scan over T. Output
``(logits_TBK, aux[L, T])`` with one aux row per spiking layer, in forward order.

- ``Spikformer`` (Zhou et al., ICLR 2023): spiking patch splitting (4 ``conv3x3 -> BN ->
  neuron`` of widths D/8, D/4, D/2, D, a 3x3/2 max pool after each of the last log2(patch)
  convs, and a ``conv3x3 -> BN -> neuron`` relative position embedding added to its input),
  ``depth`` blocks ``x + SSA(x)``, ``x + MLP(x)``, mean over tokens, ``FC classes``. Static
  images ``[B, H, W, C]`` (the first conv runs once and is repeated over T: the encoder) or
  events ``[T, B, H, W, C]``.
- Spiking self-attention ``ssa``: ``Q, K, V = neuron(BN(linear(x)))`` (spikes), per head
  ``neuron_0.5(Q K^T V * scale)`` with no softmax, ``scale = 0.125``; the attention neuron has
  threshold ``attn_threshold = 0.5`` as in Spikformer. Computed as ``Q (K^T V)`` when the
  head is narrower than the sequence (same result, linear in N). Then
  ``neuron(BN(linear(.)))``.
- Spike-driven self-attention ``sdsa`` (Yao et al., NeurIPS 2023), mask-and-add form:
  ``Q * neuron_0.5(sum_tokens(K * V))`` (Hadamard products of spikes = masks, the token sum =
  additions), then the same output projection. Residuals stay Spikformer's (spikes added);
  the membrane shortcut of the Spike-driven Transformer is not modelled.
- MLP: ``neuron(BN(linear D->rD))``, ``neuron(BN(linear rD->D))``.
- ``SpikingTextTransformer``: int token ids ``[B, L]`` -> learned token + position embedding
  (the encoder; repeated over T) -> ``neuron(BN(.))`` -> blocks -> mean over non-padding tokens
  -> ``FC classes`` (the loss averages over time). Padding tokens (``pad_id``) are also
  removed from the attention's keys. ``L > max_len`` fails with one line at trace time.
- ``remat`` (``remat.REMATS``, both models) checkpoints each Transformer block and each
  patch-splitting / embedding unit, and/or each neuron.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cfsnn_jax.errors import UserError, unknown_choice
from cfsnn_jax.neuron.layers import NeuronFactory, NeuronStats, SpikingNeuron, collect_aux, per_step
from cfsnn_jax.models.common import (TimeBatchNorm, bn_neuron, call_module, check_hwc,
                                     check_model_input, conv, init_model, layer_bn_neuron,
                                     to_time_major)
from cfsnn_jax.neuron.remat import remat_block

ATTENTIONS = ("ssa", "sdsa")


def neuron_with_threshold(neuron: NeuronFactory, threshold: float | None) -> SpikingNeuron:
  """A neuron of the factory's setting with another base threshold (None: unchanged)."""
  if threshold is None:
    return neuron()
  return neuron.replace(spec=dataclasses.replace(neuron.spec, threshold=float(threshold)))()


class LinearBNNeuron(nnx.Module):
  """``neuron(BN(linear(x)))`` on ``[T, B, ..., D_in]``."""

  def __init__(self, d_in: int, d_out: int, *, neuron: NeuronFactory, per_step_bn: bool,
               rngs: nnx.Rngs):
    self.linear = nnx.Linear(d_in, d_out, use_bias=False, rngs=rngs)
    self.bn = TimeBatchNorm(d_out, neuron.num_steps, per_step=per_step_bn, rngs=rngs)
    self.neuron = neuron()

  def __call__(self, x_TB: jax.Array) -> tuple[jax.Array, NeuronStats]:
    return layer_bn_neuron(self.linear, self.bn, self.neuron, x_TB)


class SpikingSelfAttention(nnx.Module):
  """SSA (Spikformer) or SDSA (Spike-driven Transformer) plus the output projection."""

  def __init__(self, dim: int, num_heads: int, *, neuron: NeuronFactory, attention: str,
               scale: float, attn_threshold: float | None, per_step_bn: bool,
               rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.attention = attention
    self.scale = scale
    kw = dict(neuron=neuron, per_step_bn=per_step_bn, rngs=rngs)
    self.q = LinearBNNeuron(dim, dim, **kw)
    self.k = LinearBNNeuron(dim, dim, **kw)
    self.v = LinearBNNeuron(dim, dim, **kw)
    self.attn_neuron = neuron_with_threshold(neuron, attn_threshold)
    self.proj = LinearBNNeuron(dim, dim, **kw)

  def __call__(self, x_TBND: jax.Array, mask_BN: jax.Array | None = None):
    aux = []
    q, a = self.q(x_TBND)
    aux.append(a)
    k, a = self.k(x_TBND)
    aux.append(a)
    v, a = self.v(x_TBND)
    aux.append(a)
    if mask_BN is not None:  # padding tokens are no keys: K = 0 there
      k = k * mask_BN[None, :, :, None].astype(k.dtype)
    if self.attention == "sdsa":
      kv, a = self.attn_neuron(jnp.sum(k * v, axis=2, keepdims=True))  # [T, B, 1, D]
      aux.append(a)
      y = q * kv
    else:
      T, B, N, D = q.shape
      H = self.num_heads
      q, k, v = (z.reshape(T, B, N, H, D // H) for z in (q, k, v))
      if N > D // H:  # Q (K^T V): linear in N
        kv = jnp.einsum("tbnhd,tbnhe->tbhde", k, v)
        y = jnp.einsum("tbnhd,tbhde->tbnhe", q, kv)
      else:  # (Q K^T) V
        attn = jnp.einsum("tbnhd,tbmhd->tbhnm", q, k)
        y = jnp.einsum("tbhnm,tbmhe->tbnhe", attn, v)
      y, a = self.attn_neuron((y * self.scale).reshape(T, B, N, D))
      aux.append(a)
    y, a = self.proj(y)
    aux.append(a)
    return y, aux


class SpikformerBlock(nnx.Module):
  """``x + attention(x)``, then ``x + MLP(x)``."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, neuron: NeuronFactory,
               attention: str, scale: float, attn_threshold: float | None, per_step_bn: bool,
               rngs: nnx.Rngs):
    self.attn = SpikingSelfAttention(dim, num_heads, neuron=neuron, attention=attention,
                                     scale=scale, attn_threshold=attn_threshold,
                                     per_step_bn=per_step_bn, rngs=rngs)
    hidden = int(dim * mlp_ratio)
    self.fc1 = LinearBNNeuron(dim, hidden, neuron=neuron, per_step_bn=per_step_bn, rngs=rngs)
    self.fc2 = LinearBNNeuron(hidden, dim, neuron=neuron, per_step_bn=per_step_bn, rngs=rngs)

  def __call__(self, x_TBND: jax.Array, mask_BN: jax.Array | None = None):
    y, aux = self.attn(x_TBND, mask_BN)
    x_TBND = x_TBND + y
    y, a1 = self.fc1(x_TBND)
    y, a2 = self.fc2(y)
    return x_TBND + y, aux + [a1, a2]


def _check_transformer_args(embed_dim: int, num_heads: int, attention: str) -> None:
  if attention not in ATTENTIONS:
    raise unknown_choice("attention", attention, ATTENTIONS)
  if num_heads < 1 or embed_dim % num_heads:
    raise UserError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")


def _blocks_and_head(depth, embed_dim, num_heads, mlp_ratio, num_classes,
                     **kw) -> tuple[nnx.List, nnx.Linear]:
  """``depth`` Transformer blocks and the ``FC classes`` head (both models)."""
  blocks = nnx.List([SpikformerBlock(embed_dim, num_heads, mlp_ratio, **kw)
                     for _ in range(depth)])
  return blocks, nnx.Linear(embed_dim, num_classes, rngs=kw["rngs"])


class Spikformer(nnx.Module):
  """Spikformer for images (NHWC) or event frames; default size 4-384 (CIFAR)."""

  def __init__(self, *, input_shape: Sequence[int], num_classes: int, neuron: NeuronFactory,
               embed_dim: int = 384, depth: int = 4, num_heads: int = 12,
               mlp_ratio: float = 4.0, patch_size: int = 4, attention: str = "ssa",
               attn_scale: float = 0.125, attn_threshold: float | None = 0.5,
               static_input: bool = True, per_step_bn: bool = False, remat: str = "none",
               rngs: nnx.Rngs):
    _check_transformer_args(embed_dim, num_heads, attention)
    if embed_dim % 8:
      raise UserError(f"spikformer embed_dim must be a multiple of 8 (patch splitting widths "
                      f"D/8..D), got {embed_dim}")
    if patch_size not in (1, 2, 4, 8, 16):
      raise UserError(f"spikformer patch_size must be one of 1, 2, 4, 8, 16, got {patch_size}")
    _, _, c = check_hwc("spikformer", input_shape, patch_size, f"patch_size {patch_size}")
    neuron = init_model(self, neuron=neuron, remat=remat, static_input=static_input,
                        input_shape=input_shape)
    T = self.num_steps
    widths = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
    num_pools = patch_size.bit_length() - 1
    self.pool_after = tuple(i >= len(widths) - num_pools for i in range(len(widths)))
    chans = [c] + widths
    self.sps_convs = nnx.List([conv(a, b, (3, 3), rngs=rngs)
                               for a, b in zip(chans[:-1], chans[1:])])
    self.sps_norms = nnx.List([TimeBatchNorm(b, T, per_step=per_step_bn, rngs=rngs)
                               for b in widths])
    self.sps_neurons = nnx.List([neuron() for _ in widths])
    self.rpe_conv = conv(embed_dim, embed_dim, (3, 3), rngs=rngs)
    self.rpe_bn = TimeBatchNorm(embed_dim, T, per_step=per_step_bn, rngs=rngs)
    self.rpe_neuron = neuron()
    self.blocks, self.head = _blocks_and_head(
        depth, embed_dim, num_heads, mlp_ratio, num_classes, neuron=neuron, attention=attention,
        scale=attn_scale, attn_threshold=attn_threshold, per_step_bn=per_step_bn, rngs=rngs)

  def __call__(self, x: jax.Array):
    T = self.num_steps
    check_model_input("spikformer", x, self.input_shape, T, self.static_input)
    wrap = remat_block(self.remat)
    aux = []
    for i, (conv, bn, neuron) in enumerate(zip(self.sps_convs, self.sps_norms,
                                              self.sps_neurons)):
      if i == 0 and self.static_input:  # encoder: the first conv runs once on [B, H, W, C]
        x, a = wrap(bn_neuron)(bn, neuron, to_time_major(conv(x), T, True))
      else:
        x, a = wrap(layer_bn_neuron)(conv, bn, neuron, x)
      aux.append(a)
      if self.pool_after[i]:
        x = per_step(lambda y: nnx.max_pool(y, (3, 3), strides=(2, 2),
                                           padding=((1, 1), (1, 1))), x)
    rpe, a = wrap(layer_bn_neuron)(self.rpe_conv, self.rpe_bn, self.rpe_neuron, x)
    aux.append(a)
    x = x + rpe
    x = x.reshape(x.shape[:2] + (-1, x.shape[-1]))  # [T, B, N, D]
    for block in self.blocks:
      x, block_aux = wrap(call_module)(block, x)
      aux.extend(block_aux)
    return per_step(self.head, jnp.mean(x, axis=2)), collect_aux(aux)


class SpikingTextTransformer(nnx.Module):
  """Token ids ``[B, L]`` -> spiking Transformer encoder -> logits ``[T, B, K]``."""

  def __init__(self, *, input_shape: Sequence[int], num_classes: int, neuron: NeuronFactory,
               vocab_size: int, max_len: int = 0, embed_dim: int = 256, depth: int = 4,
               num_heads: int = 8, mlp_ratio: float = 4.0, attention: str = "ssa",
               attn_scale: float = 0.125, attn_threshold: float | None = 0.5,
               pad_id: int | None = 0, static_input: bool = True, per_step_bn: bool = False,
               remat: str = "none", rngs: nnx.Rngs):
    _check_transformer_args(embed_dim, num_heads, attention)
    if not static_input:
      raise UserError("text_transformer takes static token ids [B, L]; event input is not "
                      "supported")
    if vocab_size < 1:
      raise UserError(f"text_transformer needs vocab_size >= 1 (from the text dataset), got "
                      f"{vocab_size}")
    if len(input_shape) != 1:
      raise UserError(f"text_transformer needs token input of shape [L], got input shape "
                      f"{tuple(input_shape)}")
    max_len = max_len or input_shape[0]
    if input_shape[0] > max_len:
      raise UserError(f"text_transformer: sequence length {input_shape[0]} exceeds "
                      f"max_len={max_len}")
    neuron = init_model(self, neuron=neuron, remat=remat, static_input=True,
                        input_shape=(None,))
    T = self.num_steps
    self.max_len = max_len
    self.vocab_size = vocab_size
    self.pad_id = pad_id
    self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    self.pos_embed = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (max_len, embed_dim), jnp.float32))
    self.embed_bn = TimeBatchNorm(embed_dim, T, per_step=per_step_bn, rngs=rngs)
    self.embed_neuron = neuron()
    self.blocks, self.head = _blocks_and_head(
        depth, embed_dim, num_heads, mlp_ratio, num_classes, neuron=neuron, attention=attention,
        scale=attn_scale, attn_threshold=attn_threshold, per_step_bn=per_step_bn, rngs=rngs)

  def __call__(self, tokens_BL: jax.Array):
    T = self.num_steps
    check_model_input("text_transformer", tokens_BL, self.input_shape, T, True)
    if not jnp.issubdtype(tokens_BL.dtype, jnp.integer):
      raise UserError(f"text_transformer takes integer token ids [B, L], got "
                      f"{tokens_BL.dtype} {tuple(tokens_BL.shape)}")
    L = tokens_BL.shape[1]
    if L > self.max_len:
      raise UserError(f"text_transformer: token sequence of length {L} exceeds "
                      f"max_len={self.max_len}")
    # Lookup in the table's own dtype (nnx.Embed would promote a bf16 table to float32).
    x_BLD = jnp.take(self.embed.embedding[...], tokens_BL, axis=0) + self.pos_embed[...][:L]
    wrap = remat_block(self.remat)
    x, a = wrap(bn_neuron)(self.embed_bn, self.embed_neuron, to_time_major(x_BLD, T, True))
    aux = [a]
    mask_BN = None if self.pad_id is None else (tokens_BL != self.pad_id).astype(x.dtype)
    for block in self.blocks:
      x, block_aux = wrap(call_module)(block, x, mask_BN)
      aux.extend(block_aux)
    if mask_BN is None:
      pooled = jnp.mean(x, axis=2)
    else:  # mean over non-padding tokens; an all-padding row pools to 0
      w = mask_BN / jnp.maximum(jnp.sum(mask_BN, axis=1, keepdims=True), 1.0)
      pooled = jnp.einsum("tbnd,bn->tbd", x, w)
    return per_step(self.head, pooled), collect_aux(aux)
