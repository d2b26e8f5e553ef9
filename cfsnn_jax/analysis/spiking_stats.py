"""Per-layer spiking statistics from the neurons' analysis probe, as numpy numbers.

Contract:
- ``spiking_layers(model, x)`` -> ``[(name, SpikingNeuron), ...]`` in forward (call) order; the
  order is read from the jaxpr of the probed forward (where each layer's potential is made),
  so it needs no per-model list. ``name`` is the module path, e.g. ``blocks.0.sn1``.
- ``collect_spiking_stats(model, batches, training=False)`` -> ``SpikingStats``: runs a copy of
  the model with ``probe=True`` under ``nnx.capture`` on real batches (padding rows dropped)
  and returns, per layer and time step (``[L, T]`` arrays, weighted by examples):
  ``rate_LT`` (mean ``|S|``: spikes per neuron and step, multi-level counts, signed ``|S|``),
  ``grad_share_LT`` (share of potentials inside the gradient-available interval,
  ``gradient_available`` with the layer's own threshold and sharpness), ``theta_LT``
  (threshold used), ``alpha_LT`` (surrogate sharpness used; DS-ATGO's dynamic surrogate:
  ``1 / width`` from that batch's statistic, ``neurons.dynamic_alpha``), and a sample
  of membrane potentials per layer for histograms. ``training=True`` runs in train mode
  (batch statistics, DS-ATGO batch thresholds; the copy's state updates are discarded): what
  the backward pass sees. ``training=False``: inference.
- ``gradient_available(h, theta, alpha, spec)`` (mask), ``gradient_available_share``,
  ``effective_alpha_T(...)``: the pure pieces, for tests and notebooks. ``membrane_histograms(stats)``: counts per step + edges.
- Learned surrogate shapes: ``neuron_parameters(model)`` (alpha per step, DS-ATGO EMA
  threshold, decay per layer), ``neuron_scalars(model)`` (``alpha/<layer>/<t>`` and
  ``theta_ema/<layer>/<t>`` for a metrics log), and their evolution over training from the
  ``metrics.jsonl`` scalars (``neuron_history_from_metrics``) or from every checkpoint kept in
  the workdir (``neuron_history_from_checkpoints``; step 0 is the initialisation, known from
  the spec).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Iterable

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfsnn_jax.neuron import equations as neurons
from cfsnn_jax.training import checkpointing
from cfsnn_jax.analysis import inputs
from cfsnn_jax.neuron.layers import (SpikingNeuron, layer_name, neuron_parameters,  # noqa: F401
                              neuron_scalars)


# --------------------------------------------------------------------------------------------
# Pure pieces.
# --------------------------------------------------------------------------------------------


def effective_alpha_T(H_TN: jax.Array, theta_T: jax.Array, alpha_T: jax.Array,
                      spec: neurons.NeuronSpec) -> jax.Array:
  """Surrogate sharpness each step's backward uses: ``alpha_T`` (learned or fixed), or for the
  DS-ATGO dynamic surrogate ``1 / dynamic_width(stat_t)`` with ``stat_t = std(H_t)`` (unbiased,
  over batch and features) or ``theta_t``: ``neurons.dynamic_alpha`` per step."""
  if spec.surrogate_mode != "dynamic":
    return jnp.asarray(alpha_T, jnp.float32)
  h = H_TN.reshape(H_TN.shape[0], -1)
  theta_T = jnp.broadcast_to(jnp.asarray(theta_T, jnp.float32), (h.shape[0],))
  return jax.vmap(lambda h_N, theta: neurons.dynamic_alpha(h_N, theta, spec))(h, theta_T)


def gradient_available(h: jax.Array, theta: Any, alpha: Any,
                       spec: neurons.NeuronSpec) -> jax.Array:
  """Boolean mask of potentials whose surrogate gradient is available (METHOD.md §4 analysis).

  Compact families (rectangular, triangle): inside the support of g_alpha around some level
  k*theta. Smooth families (sigmoid, atan): g_alpha(v) >= 1% of its peak.
  """
  ks = jnp.arange(1, spec.levels + 1, dtype=jnp.float32)
  mag = jnp.abs(h) if spec.signed else h
  v = mag.astype(jnp.float32)[..., None] - ks * jnp.asarray(theta, jnp.float32)
  phi = neurons.SURROGATES[spec.surrogate].phi
  p = phi(jnp.asarray(alpha, jnp.float32) * v)
  if spec.surrogate in ("rectangular", "triangle"):
    return (p > 0).any(-1)
  return (p >= 0.01 * phi(jnp.zeros((), jnp.float32))).any(-1)


def gradient_available_share(h: jax.Array, theta: Any, alpha: Any,
                             spec: neurons.NeuronSpec) -> jax.Array:
  """Share of ``h`` inside the gradient-available interval (scalar ``theta`` and ``alpha``)."""
  return jnp.mean(gradient_available(h, theta, alpha, spec).astype(jnp.float32))


# --------------------------------------------------------------------------------------------
# Probing a model.
# --------------------------------------------------------------------------------------------


def _probe_copy(model: nnx.Module, training: bool):
  graphdef, state = nnx.split(model)
  copy = nnx.merge(graphdef, state, copy=True)
  if training:
    copy.train()
  else:
    copy.eval()
  copy.set_attributes(probe=True)
  return copy


def _capture(graphdef, state, x) -> dict[tuple, Any]:
  model = nnx.merge(graphdef, state)
  _, inter = nnx.capture(model, nnx.Intermediate)(x)
  return {tuple(path): v[0] for path, v in nnx.to_flat_state(inter)}


def _forward_order(graphdef, state, x, paths: list[tuple]) -> list[int]:
  """Index of the top-level eqn that makes each layer's potential: the call order."""
  def fn(st, x):
    flat = _capture(graphdef, st, x)
    return [flat[p + ("potential_TB",)] for p in paths]
  closed = jax.make_jaxpr(fn)(state, jax.ShapeDtypeStruct(x.shape, x.dtype))
  producer = {}
  for i, eqn in enumerate(closed.jaxpr.eqns):
    for v in eqn.outvars:
      producer[v] = i
  return [-1 if isinstance(v, jex.Literal) else producer.get(v, -1)
          for v in closed.jaxpr.outvars]


def spiking_layers(model: nnx.Module, x: Any) -> list[tuple[str, SpikingNeuron]]:
  """``[(name, neuron)]`` in forward order (``x``: one model input, array or shape struct)."""
  copy = _probe_copy(model, training=False)
  found = [(tuple(p), m) for p, m in nnx.iter_modules(copy) if isinstance(m, SpikingNeuron)]
  if not found:
    raise ValueError("model has no SpikingNeuron layer")
  graphdef, state = nnx.split(copy)
  keys = _forward_order(graphdef, state, x, [p for p, _ in found])
  pos = {p: i for i, (p, _) in enumerate(found)}
  ranked = sorted(found, key=lambda pm: (keys[pos[pm[0]]], pos[pm[0]]))
  originals = {tuple(p): m for p, m in nnx.iter_modules(model) if isinstance(m, SpikingNeuron)}
  return [(layer_name(p), originals[p]) for p, _ in ranked]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _probe_summary(graphdef, state, x, layers: tuple, num_samples: int):
  flat = _capture(graphdef, state, x)
  out = []
  for path, spec in layers:
    H = flat[path + ("potential_TB",)].astype(jnp.float32)
    S = flat[path + ("spikes_TB",)].astype(jnp.float32)
    theta_T = flat[path + ("theta_T",)].astype(jnp.float32)
    T = H.shape[0]
    H_TN = H.reshape(T, -1)
    alpha_T = effective_alpha_T(H_TN, theta_T, flat[path + ("surrogate_alpha_T",)], spec)
    share_T = jax.vmap(lambda h, th, al: gradient_available_share(h, th, al, spec))(
        H_TN, theta_T, alpha_T)
    n = H_TN.shape[1]
    rng = np.random.default_rng(0)  # a fixed subset of positions per layer (trace time)
    idx = np.sort(rng.choice(n, size=min(num_samples, n), replace=False))
    out.append({"rate_T": jnp.mean(jnp.abs(S.reshape(T, -1)), axis=1), "share_T": share_T,
                "theta_T": theta_T, "alpha_T": alpha_T, "samples_TS": H_TN[:, idx]})
  return out


@dataclasses.dataclass
class SpikingStats:
  """Statistics per spiking layer (forward order) and step, averaged over examples."""
  names: list[str]
  specs: list[neurons.NeuronSpec]
  training: bool
  num_examples: int
  rate_LT: np.ndarray
  grad_share_LT: np.ndarray
  theta_LT: np.ndarray
  alpha_LT: np.ndarray
  samples: list[np.ndarray]  # per layer: sampled pre-fire potentials [T, S]

  @property
  def num_steps(self) -> int:
    return int(self.rate_LT.shape[1])

  def to_json(self) -> dict:
    return {
        "layers": self.names, "training_mode": self.training,
        "num_examples": self.num_examples,
        "neuron": [{"levels": s.levels, "signed": s.signed, "reset": s.reset,
                    "surrogate": s.surrogate, "surrogate_mode": s.surrogate_mode,
                    "threshold_mode": s.threshold_mode} for s in self.specs],
        "rate_LT": self.rate_LT.tolist(), "rate_L": self.rate_LT.mean(1).tolist(),
        "rate_mean": float(self.rate_LT.mean()),
        "grad_share_LT": self.grad_share_LT.tolist(),
        "grad_share_L": self.grad_share_LT.mean(1).tolist(),
        "grad_share_mean": float(self.grad_share_LT.mean()),
        "theta_LT": self.theta_LT.tolist(), "alpha_LT": self.alpha_LT.tolist(),
    }


def collect_spiking_stats(model: nnx.Module, batches: Iterable[Any], *, training: bool = False,
                          max_batches: int | None = None, num_samples: int = 2048,
                          max_samples: int = 20000) -> SpikingStats:
  """Runs the probed model on ``batches``; see the module docstring."""
  static_input, _ = inputs.model_timing(model)
  copy = _probe_copy(model, training)
  graphdef, state = nnx.split(copy)
  layers = None
  sums: dict[str, np.ndarray] = {}
  samples: list[list[np.ndarray]] = []
  total = 0
  for x, n in inputs.iterate_inputs(batches, static_input, max_batches):
    if layers is None:
      ordered = spiking_layers(copy, jax.ShapeDtypeStruct(x.shape, x.dtype))
      paths = {layer_name(tuple(p)): tuple(p) for p, m in nnx.iter_modules(copy)
               if isinstance(m, SpikingNeuron)}
      layers = tuple((paths[name], m.spec) for name, m in ordered)
      samples = [[] for _ in layers]
    out = jax.device_get(_probe_summary(graphdef, state, x, layers, num_samples))
    for key in ("rate_T", "share_T", "theta_T", "alpha_T"):
      stacked = np.stack([np.asarray(o[key], np.float64) for o in out])
      sums[key] = sums.get(key, 0.0) + n * stacked
    for i, o in enumerate(out):
      if sum(s.shape[1] for s in samples[i]) < max_samples:
        samples[i].append(np.asarray(o["samples_TS"]))
    total += n
  if layers is None:
    raise ValueError("collect_spiking_stats needs at least one non-empty batch")
  mean = {k: (v / total).astype(np.float32) for k, v in sums.items()}
  return SpikingStats(names=[layer_name(p) for p, _ in layers], specs=[s for _, s in layers],
                      training=training, num_examples=total, rate_LT=mean["rate_T"],
                      grad_share_LT=mean["share_T"], theta_LT=mean["theta_T"],
                      alpha_LT=mean["alpha_T"],
                      samples=[np.concatenate(s, axis=1)[:, :max_samples] for s in samples])


def threshold_lines(spec: neurons.NeuronSpec, theta: float) -> list[float]:
  """Potentials where the staircase steps: ``k theta`` (k = 1..D), and ``-k theta`` if signed."""
  ks = [k * float(theta) for k in range(1, spec.levels + 1)]
  return sorted([-k for k in ks] + ks) if spec.signed else ks


def membrane_histograms(stats: SpikingStats, bins: int = 60) -> list[dict]:
  """Per layer: ``{"edges": [bins + 1], "counts_T": [T, bins]}`` of the sampled potentials,
  over a range that covers 0.5..99.5 % of them and the first threshold on both sides."""
  out = []
  for spec, h_TS, theta_T in zip(stats.specs, stats.samples, stats.theta_LT):
    theta = float(np.max(np.abs(theta_T)))
    lo = min(float(np.percentile(h_TS, 0.5)), -1.5 * theta if spec.signed else -0.5 * theta)
    hi = max(float(np.percentile(h_TS, 99.5)), 1.5 * theta)
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.stack([np.histogram(h, bins=edges)[0] for h in h_TS])
    out.append({"edges": edges, "counts_T": counts})
  return out


# --------------------------------------------------------------------------------------------
# Learned surrogate shapes, thresholds, and their evolution over training.
# --------------------------------------------------------------------------------------------


def _empty_history(source: str) -> dict:
  return {"source": source, "steps": [], "alpha": {}, "theta_ema": {}}


def _history_from_rows(rows: list[tuple[int, dict[str, float]]], source: str) -> dict:
  """``rows``: (step, ``neuron_scalars``-style dict), sorted by step."""
  hist = _empty_history(source)
  pattern = re.compile(r"^(alpha|theta_ema)/(.+)/(\d+)$")
  per_step: dict[int, dict] = {}
  for step, scalars in rows:
    for key, value in scalars.items():
      m = pattern.match(key)
      if m:
        per_step.setdefault(step, {}).setdefault((m[1], m[2]), {})[int(m[3])] = value
  hist["steps"] = sorted(per_step)
  for i, step in enumerate(hist["steps"]):
    for (kind, layer), by_t in per_step[step].items():
      series = hist[kind].setdefault(layer, [None] * len(hist["steps"]))
      series[i] = [by_t[t] for t in sorted(by_t)]
  return hist


def neuron_history_from_metrics(workdir: str) -> dict:
  """Evolution from ``alpha/...`` / ``theta_ema/...`` scalars in ``workdir/metrics.jsonl``:
  ``{"source", "steps": [S], "alpha": {layer: [S][T]}, "theta_ema": {layer: [S][T]}}``
  (a layer's entry is None at a step where it was not logged)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return _empty_history("metrics")
  from cfsnn_jax.training.metric_writers import read_metrics
  rows = [(int(r["step"]), r) for r in read_metrics(workdir)
          if any(k.startswith(("alpha/", "theta_ema/")) for k in r)]
  return _history_from_rows(sorted(rows, key=lambda r: r[0]), "metrics")


def _initial_scalars(model: nnx.Module) -> dict[str, float]:
  """Step-0 values known from the spec: alpha_0 for learnable surrogates, theta for the EMA."""
  out = {}
  for path, m in nnx.iter_modules(model):
    if not isinstance(m, SpikingNeuron):
      continue
    name = layer_name(tuple(path))
    if m.spec.learnable_alpha:
      out.update({f"alpha/{name}/{t}": float(m.spec.alpha) for t in range(m.num_steps)})
    if m.theta_ema is not None:
      out.update({f"theta_ema/{name}/{t}": float(m.spec.threshold)
                  for t in range(m.num_steps)})
  return out


def read_only_checkpoints(workdir: str):
  """An orbax manager over ``workdir/checkpoints`` that never writes or cleans anything (a run
  may still be writing there), or None when there is no such directory."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    return None
  return checkpointing.open_manager(directory, read_only=True)


def neuron_history_from_checkpoints(workdir: str, graphdef: Any, template_state: dict) -> dict:
  """Evolution read from every checkpoint kept under ``workdir/checkpoints`` (orbax, read
  only), plus step 0 (the initialisation). ``template_state``: the training state dict
  (``params``, ``rest``, ...) the checkpoints were saved from; ``graphdef``: a graphdef that
  merges with ``(params, rest)``. Same format as ``neuron_history_from_metrics``."""
  manager = read_only_checkpoints(workdir)
  if manager is None:
    return _empty_history("checkpoints")
  try:
    steps = sorted(manager.all_steps())
    rows = []
    for step in steps:
      restored = checkpointing.restore(manager, step, template_state, None)
      model = nnx.merge(graphdef, restored["params"], restored["rest"])
      rows.append((int(step), neuron_scalars(model)))
  finally:
    manager.close()
  if not rows:
    return _empty_history("checkpoints")
  if rows[0][0] > 0:
    model = nnx.merge(graphdef, template_state["params"], template_state["rest"])
    rows.insert(0, (0, _initial_scalars(model)))
  return _history_from_rows(rows, "checkpoints")
