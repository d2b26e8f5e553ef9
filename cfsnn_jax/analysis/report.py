"""End-of-run analysis report: the plots, the energy table and ``analysis.json`` in the workdir.

Contract: ``write_training_report(eval_graphdef, state, batches, workdir)`` takes what the
training loop already has (the eval-mode graphdef, the state dict with ``params`` and
``rest``, its evaluation batches, the workdir), runs the first ``max_batches`` batches and
writes into ``workdir``:
- ``firing_rates.png`` and ``membrane_hist.png``: eval mode (inference, the energy's rates;
  DS-ATGO uses its EMA thresholds);
- ``grad_available.png``: train mode (batch statistics and DS-ATGO batch thresholds: the
  interval the backward pass actually uses);
- ``alphas.png``: the sharpness each step's backward uses (train mode) and its evolution
  over training, from ``alpha/...`` scalars in ``metrics.jsonl`` if logged, else from the
  checkpoints kept in ``workdir`` (single process only);
- ``energy.json`` / ``energy.md`` (METHOD.md §7, eval mode);
- ``analysis.json``: every number above.
Returns a small summary dict (mean firing rate, mean gradient-available share, energy).
Call it on process 0 only; it copies the replicated state to host memory first.

``tensorboard_statistics(step, eval_model, eval_batches, writer)``: the training loop's
``on_eval`` hook (``run.run``): eval-mode statistics of one test batch (per-layer firing rate
per time step, potential samples, thresholds) to ``writer.write_spiking_stats``;
single-process runs only (multi-host arrays are not addressable on process 0 alone).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any, Iterable

import jax
import numpy as np
from flax import nnx

from cfsnn_jax.analysis import energy, inputs, plots, spiking_stats


def _histograms_json(hists: list[dict], names: list[str]) -> dict:
  return {n: {"edges": np.asarray(h["edges"]).tolist(),
              "counts_T": np.asarray(h["counts_T"]).tolist()} for n, h in zip(names, hists)}


def tensorboard_statistics(step: int, eval_model: Any, eval_batches: Iterable[Any],
                           writer: Any) -> None:
  if jax.process_count() != 1:
    return
  batch = next(iter(eval_batches))
  writer.write_spiking_stats(step, spiking_stats.collect_spiking_stats(eval_model, [batch]))


def write_training_report(eval_graphdef: Any, state: dict, batches: Iterable[Any],
                          workdir: str, *, max_batches: int = 2) -> dict:
  batches = list(itertools.islice(iter(batches), max_batches))
  host = inputs.host_local({"params": state["params"], "rest": state["rest"]})
  model = nnx.merge(eval_graphdef, host["params"], host["rest"])
  eval_stats = spiking_stats.collect_spiking_stats(model, batches, training=False)
  train_stats = spiking_stats.collect_spiking_stats(model, batches, training=True)
  energy_report = energy.measure_energy(model, batches)
  energy.write_energy(energy_report, workdir)

  history = spiking_stats.neuron_history_from_metrics(workdir)
  if not history["steps"] and jax.process_count() == 1:
    history = spiking_stats.neuron_history_from_checkpoints(workdir, eval_graphdef, state)

  hists = spiking_stats.membrane_histograms(eval_stats)
  files = {
      "firing_rates": plots.plot_firing_rates(eval_stats, workdir),
      "membrane_hist": plots.plot_membrane_histograms(eval_stats, workdir, hists=hists),
      "grad_available": plots.plot_gradient_available(train_stats, workdir),
      "alphas": plots.plot_alphas(train_stats, history, workdir),
  }
  summary = {
      "firing_rate": float(eval_stats.rate_LT.mean()),
      "grad_available_share": float(train_stats.grad_share_LT.mean()),
      "energy_mj_per_image": energy_report.energy_mj,
  }
  analysis = {
      "summary": summary,
      "eval": dict(eval_stats.to_json(),
                   membrane_histograms=_histograms_json(hists, eval_stats.names)),
      "train": train_stats.to_json(),
      "energy": {k: v for k, v in energy_report.to_json().items() if k != "layers"},
      "neuron_parameters": {
          name: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in p.items()}
          for name, p in spiking_stats.neuron_parameters(model).items()},
      "history": history,
      "files": {k: os.path.basename(v) for k, v in files.items()} | {
          "energy": ["energy.json", "energy.md"]},
  }
  with open(os.path.join(workdir, "analysis.json"), "w") as f:
    json.dump(analysis, f, indent=2)
  return summary
