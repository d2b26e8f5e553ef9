"""One experiment end to end: ``run(config, workdir)`` trains, then writes the report.

Contract: ``train.train_and_evaluate(config, workdir, end_of_run=...)`` (fresh, resumed or
finished: README "Runs and workdirs"); on process 0, before ``summary.json`` marks the run
finished and still under the workdir lock, the end-of-run report: ``curves.png`` from
``metrics.jsonl`` and, with ``config.analysis_report``, the firing-rate / potential /
gradient-availability plots, the energy table and ``analysis.json`` (``analysis.report``);
the report's energy and gradient-available share go into the summary and ``summary.json``.
A finished workdir gets nothing new. TensorBoard gets the figures as images after the report
(``metric_writers.write_figures_run``) and, at every evaluation, the per-layer
statistics of ``analysis.report.tensorboard_statistics`` (the loop's ``on_eval``). ``main``
calls this; the training loop itself never imports ``analysis``.
"""

from __future__ import annotations

import os
from typing import Any

from cfsnn_jax.analysis import curves, report
from cfsnn_jax.training import metric_writers, loop as train


def run(config: Any, workdir: str) -> dict:
  def end_of_run(summary: dict, local_dir: str) -> dict:
    curves.plot_training_curves(local_dir)
    if not config.analysis_report:  # firing rates, potentials, gradient availability, energy
      return {}
    analysis = report.write_training_report(summary["eval_graphdef"], summary["state"],
                                            summary["eval_batches"], local_dir)
    print(f"report: energy={analysis['energy_mj_per_image']:.3g}mJ/image "
          f"grad_available_share={analysis['grad_available_share']:.3f} "
          f"({os.path.join(workdir, 'analysis.json')})", flush=True)
    return {"energy_mj_per_image": analysis["energy_mj_per_image"],
            "grad_available_share": analysis["grad_available_share"]}

  def end_of_run_with_figures(summary: dict, local_dir: str) -> dict:
    extra = end_of_run(summary, local_dir)
    metric_writers.write_figures_run(workdir, local_dir, summary["steps"])
    return extra

  return train.train_and_evaluate(config, workdir, end_of_run=end_of_run_with_figures,
                                  on_eval=report.tensorboard_statistics)
