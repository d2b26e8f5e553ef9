"""One experiment end to end: ``run(config, workdir)`` trains, then writes the report.

Contract: ``train.train_and_evaluate(config, workdir)`` (resumes from ``workdir``), then on
process 0 only the end-of-run report: ``curves.png`` from ``metrics.jsonl`` and, with
``config.analysis_report``, the firing-rate / potential / gradient-availability plots, the
energy table and ``analysis.json`` (``analysis.report``); the report's energy and
gradient-available share are added to the returned summary and to ``summary.json``; then
the figures and the config (as hparams) go to TensorBoard (``tensorboard_summaries``), and
during training ``analysis.report.tensorboard_statistics`` logs per-layer statistics at
every evaluation (the loop's ``on_eval``).
``main`` calls this; the training loop itself never imports ``analysis``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from cfsnn_jax import tensorboard_summaries, train
from cfsnn_jax.analysis import curves, report


def run(config: Any, workdir: str) -> dict:
  summary = train.train_and_evaluate(config, workdir, on_eval=report.tensorboard_statistics)
  if jax.process_index() != 0:
    return summary
  curves.plot_training_curves(workdir)
  if config.analysis_report:  # firing rates, potentials, gradient availability, energy
    analysis = report.write_training_report(summary["eval_graphdef"], summary["state"],
                                            summary["eval_batches"], workdir)
    summary["energy_mj_per_image"] = analysis["energy_mj_per_image"]
    summary["grad_available_share"] = analysis["grad_available_share"]
    path = os.path.join(workdir, "summary.json")
    with open(path) as f:
      written = json.load(f)
    written.update(energy_mj_per_image=summary["energy_mj_per_image"],
                   grad_available_share=summary["grad_available_share"])
    with open(path, "w") as f:
      json.dump(written, f, indent=2)
    print(f"report: energy={summary['energy_mj_per_image']:.3g}mJ/image "
          f"grad_available_share={summary['grad_available_share']:.3f} "
          f"({os.path.join(workdir, 'analysis.json')})", flush=True)
  tensorboard_summaries.write_end_of_run(workdir, config, {  # figures, config as hparams
      k: v for k, v in summary.items() if isinstance(v, (int, float))})
  return summary
