"""Losses as pure functions (METHOD.md §3, §5).

- ``cross_entropy(logits_TBK, labels_B, label_smoothing)``: CE on the time-mean logits.
- ``tet_loss(logits_TBK, labels_B, lam, phi, label_smoothing)``: TET (Deng et al., 2022).
- ``pn_loss(stats, variant)``: positive-negative balanced loss over layers and steps, from the
  ``neurons.NeuronStats`` (fields ``[L, T]``) the spiking layers return.
- ``task_loss(name, ...)``: dispatch by config name (``choices.TASK_LOSSES``) with a one-line
  ``UserError`` for unknown names.
All return scalars (mean over the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cfsnn_jax.config.choices import PN_VARIANTS, TASK_LOSSES
from cfsnn_jax.errors import unknown_choice
from cfsnn_jax.neuron.equations import NeuronStats


def _smoothed_ce(logits_BK: jax.Array, labels_B: jax.Array, label_smoothing: float) -> jax.Array:
  num_classes = logits_BK.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits_BK.astype(jnp.float32), targets)


def cross_entropy(logits_TBK: jax.Array, labels_B: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Cross-entropy of the time-mean logits, with label smoothing epsilon."""
  return _smoothed_ce(jnp.mean(logits_TBK, axis=0), labels_B, label_smoothing).mean()


def tet_loss(logits_TBK: jax.Array, labels_B: jax.Array, lam: float = 1e-3, phi: float = 1.0,
             label_smoothing: float = 0.0) -> jax.Array:
  """(1 - lam) mean_t CE(o_t, y) + lam mean_t MSE(o_t, phi)."""
  ce_TB = jax.vmap(lambda o: _smoothed_ce(o, labels_B, label_smoothing))(logits_TBK)
  mse = jnp.mean(jnp.square(logits_TBK.astype(jnp.float32) - phi))
  return (1 - lam) * ce_TB.mean() + lam * mse


def pn_loss(aux: NeuronStats, variant: str = "mean") -> jax.Array:
  """mean_{l,t} (P - N)^2 (``mean``) or mean_{l,t} mean(tanh(kappa H))^2 (``sign``)."""
  if variant == "mean":
    return jnp.mean(jnp.square(aux.h_pos_T - aux.h_neg_T))
  if variant == "sign":
    return jnp.mean(jnp.square(aux.h_tanh_T))
  raise unknown_choice("pn_variant", variant, PN_VARIANTS)


def task_loss(name: str, logits_TBK: jax.Array, labels_B: jax.Array, *,
              label_smoothing: float = 0.0, tet_lambda: float = 1e-3,
              tet_phi: float = 1.0) -> jax.Array:
  if name == "ce":
    return cross_entropy(logits_TBK, labels_B, label_smoothing)
  if name == "tet":
    return tet_loss(logits_TBK, labels_B, tet_lambda, tet_phi, label_smoothing)
  raise unknown_choice("loss", name, TASK_LOSSES)


def validate_loss_config(name: str, pn_variant: str) -> None:
  """One-line ``UserError`` for an unknown loss or PN variant (jax-free twin: config_schema)."""
  if name not in TASK_LOSSES:
    raise unknown_choice("loss", name, TASK_LOSSES)
  if pn_variant not in PN_VARIANTS:
    raise unknown_choice("pn_variant", pn_variant, PN_VARIANTS)
