"""Model inputs for the analyses: evaluation batches in, host arrays of real examples out.

Contract:
- ``model_input(batch, static_input)``: a batch dict (``"image"`` example-major, optional
  ``"mask"`` with 0 on padding rows, as ``data.pipeline.EvalBatches`` yields it) or a bare
  array -> the model's input as a numpy array, padding rows removed; event batches
  ``[B, T, ...]`` become time-major ``[T, B, ...]`` (the same convention as the training
  loop). Analyses must never count padded examples, so they trim instead of masking.
- ``iterate_inputs(batches, static_input, max_batches)`` yields ``(x, num_examples)``.
- ``model_timing(model)`` -> ``(static_input, num_steps)`` read from the model itself.
- ``host_local(tree)``: jax arrays -> numpy, taking the local replica of arrays that span
  several processes (parameters and model state are replicated), so an analysis can run on
  process 0 alone.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import jax
import numpy as np
from flax import nnx

from cfsnn_jax.neuron.layers import SpikingNeuron


def model_input(batch: Any, static_input: bool) -> np.ndarray:
  if isinstance(batch, dict):
    x = np.asarray(batch["image"])
    mask = batch.get("mask")
    if mask is not None:
      x = x[np.asarray(mask) > 0]
  else:
    x = np.asarray(batch)
  return x if static_input else np.swapaxes(x, 0, 1)


def iterate_inputs(batches: Iterable[Any], static_input: bool,
                   max_batches: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      return
    x = model_input(batch, static_input)
    n = x.shape[0] if static_input else x.shape[1]
    if n:
      yield x, n


def model_timing(model: nnx.Module) -> tuple[bool, int]:
  """``(static_input, T)``; T from the model, else from its first spiking layer."""
  static_input = bool(getattr(model, "static_input", True))
  num_steps = getattr(model, "num_steps", None)
  if num_steps is None:
    for _, module in nnx.iter_modules(model):
      if isinstance(module, SpikingNeuron):
        num_steps = module.num_steps
        break
  if num_steps is None:
    raise ValueError("model has no num_steps attribute and no SpikingNeuron layer")
  return static_input, int(num_steps)


def host_local(tree: Any) -> Any:
  def one(x):
    if isinstance(x, jax.Array):
      if x.is_fully_addressable:
        return np.asarray(x)
      return np.asarray(x.addressable_data(0))
    return x
  return jax.tree.map(one, tree)
