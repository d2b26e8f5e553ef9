"""Optax optimizer from the config: AdamW or SGD + momentum, cosine or constant schedule with
linear warm-up, weight decay masked to weight matrices / kernels only (never BatchNorm, biases,
surrogate ``rho`` or PLIF decay logits), optional global-norm clipping."""

from __future__ import annotations

from typing import Any

import jax
import optax

from cfsnn_jax.config.choices import OPTIMIZERS
from cfsnn_jax.errors import unknown_choice


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: kernels / embeddings with ndim >= 2."""
  def is_weight(path, leaf):
    # nnx.State paths end in (..., DictKey(name), GetAttrKey("value")): use the last dict key.
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(names) and leaf.ndim >= 2 and names[-1] in ("kernel", "embedding")
  return jax.tree_util.tree_map_with_path(is_weight, params)


def learning_rate_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
  lr = opt_cfg.learning_rate
  warmup = max(0, min(int(opt_cfg.warmup_steps), total_steps - 1))
  if opt_cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup))
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(opt_cfg: Any, total_steps: int) -> optax.GradientTransformation:
  if opt_cfg.warmup_steps and opt_cfg.warmup_steps >= total_steps:
    from cfsnn_jax.errors import UserError
    raise UserError(f"config.optimizer.warmup_steps={opt_cfg.warmup_steps} is not shorter than "
                    f"the run ({total_steps} steps)")
  schedule = learning_rate_schedule(opt_cfg, total_steps)
  parts = []
  if opt_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
  if opt_cfg.name == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=opt_cfg.weight_decay, mask=decay_mask))
  elif opt_cfg.name == "sgd":
    if opt_cfg.weight_decay > 0:
      parts.append(optax.add_decayed_weights(opt_cfg.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt_cfg.momentum, nesterov=False))
  else:
    raise unknown_choice("optimizer", opt_cfg.name, OPTIMIZERS)
  return optax.chain(*parts)
