"""One experiment end to end: ``run(config, workdir)`` trains, then writes the report.

Contract: ``run(config_or_resolved, workdir) -> Trained``, the entry of a library call as
``main`` is the command line's: a plain config is validated and resolved here, once
(``cfsnn_jax.config.resolve``; ``main`` passes the run it resolved), and the batch size is
checked against the devices, before anything is written or compiled. Then
``training.train_and_evaluate`` (fresh, resumed or finished: README "Runs and workdirs"); on
process 0, before ``summary.json`` marks the run finished and still under the workdir lock,
the end-of-run report this module owns: ``curves.png`` from ``metrics.jsonl`` and, with
``config.analysis_report``, the firing-rate / potential / gradient-availability plots, the
energy table and ``analysis.json`` (``analysis.report``); the report's energy and
gradient-available share go into the summary and ``summary.json``. A finished workdir gets
nothing new. TensorBoard gets the figures as images after the report
(``metric_writers.write_figures_run``) and, at every evaluation, the per-layer statistics of
``analysis.report.tensorboard_statistics`` (the loop's ``on_eval``). The training loop itself
never imports ``analysis``.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from cfsnn_jax.analysis import curves, report
from cfsnn_jax.config import resolve
from cfsnn_jax.data import pipeline
from cfsnn_jax.training import metric_writers
from cfsnn_jax.training.loop import Trained, train_and_evaluate


def end_of_run_report(trained: Trained, local_dir: str, workdir: str,
                      analysis_report: bool) -> dict:
  """The report into ``local_dir``; returns the numbers it adds to the summary."""
  curves.plot_training_curves(local_dir)
  extra = {}
  if analysis_report:  # firing rates, potentials, gradient availability, energy
    analysis = report.write_training_report(trained.eval_graphdef, trained.state,
                                            trained.eval_batches, local_dir)
    print(f"report: energy={analysis['energy_mj_per_image']:.3g}mJ/image "
          f"grad_available_share={analysis['grad_available_share']:.3f} "
          f"({os.path.join(workdir, 'analysis.json')})", flush=True)
    extra = {"energy_mj_per_image": analysis["energy_mj_per_image"],
             "grad_available_share": analysis["grad_available_share"]}
  metric_writers.write_figures_run(workdir, local_dir, trained.summary["steps"])
  return extra


def run(config: Any, workdir: str) -> Trained:
  resolved = resolve(config)
  pipeline.check_batch_size(resolved.config.batch_size, jax.process_count(), jax.device_count())
  return train_and_evaluate(
      resolved, workdir, on_eval=report.tensorboard_statistics,
      end_of_run=lambda trained, local_dir: end_of_run_report(
          trained, local_dir, workdir, resolved.config.analysis_report))
