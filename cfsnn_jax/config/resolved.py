"""The resolved run: a config validated once, at its entry, with what it resolves to.

Contract: ``resolve(config, *, require_data_dir=False) -> ResolvedRun`` validates ``config``
against the schema (``schema.validate_config``: one-line ``UserError`` for every mistake) and
resolves what the config names: the neuron preset with its overrides (``NeuronSpec``) and the
dataset's options (``config.data`` over the dataset's defaults, plain data; None where the
data loader will report an unknown option itself). Every entry (the command line, the sweep
launcher, the energy CLI, ``run.run`` called from a notebook) resolves once and passes the
result down; ``training/`` and the layers built from ``ResolvedRun.neuron`` never validate
again. ``resolve`` of a ``ResolvedRun`` returns it unchanged. Jax-free, as the whole package.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cfsnn_jax.config import schema
from cfsnn_jax.errors import UserError
from cfsnn_jax.neuron.spec import NeuronSpec


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
  """A validated config and what it resolves to; made by ``resolve`` only."""
  config: Any  # the validated ml_collections ConfigDict (treat as read-only)
  neuron: NeuronSpec  # config.neuron after its preset
  data_options: dict | None  # the dataset's options after its defaults (JSON-able)


def resolve(config: Any, *, require_data_dir: bool = False) -> ResolvedRun:
  """``config`` validated and resolved (see the module docstring)."""
  if isinstance(config, ResolvedRun):
    return config
  neuron = schema.validate_config(config, require_data_dir=require_data_dir)
  from cfsnn_jax import data  # the dataset registry is jax-free
  try:
    data_options = data.data_options(config, config.dataset).to_dict()
  except (ValueError, KeyError):  # an unknown option: the loader says so in one line
    data_options = None
  return ResolvedRun(config, neuron, data_options)


def require_resolved(run: Any, where: str) -> ResolvedRun:
  """``run`` if it is a ``ResolvedRun``, else one line saying how to make one."""
  if not isinstance(run, ResolvedRun):
    raise UserError(f"{where} takes a resolved run, got {type(run).__name__}; pass "
                    "cfsnn_jax.config.resolve(config)")
  return run
