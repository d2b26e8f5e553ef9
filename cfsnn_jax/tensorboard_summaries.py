"""TensorBoard contents beyond scalars, as methods ``MetricWriter`` inherits (tensorboardX, no TF).

Contract: a mixin for ``metric_writers.MetricWriter`` that uses only its ``enabled``, ``_tb``
(a tensorboardX ``SummaryWriter``) and ``write(step, split, scalars)``; every method does
nothing on a disabled writer (processes other than 0). What each adds, and its tags:
- ``track_learning_rate(schedule)`` + ``write_learning_rate(step)``: the optax schedule's
  value used by the update that produced ``step`` (``schedule(step - 1)``), as the scalar
  ``optimizer/learning_rate`` (also in ``metrics.jsonl``, split ``optimizer``).
- ``write_spiking_stats(step, stats)``: from a ``spiking_stats.SpikingStats`` of evaluation
  batches: ``firing_rate/<layer>`` (mean over time steps) and ``firing_rate_t/<layer>/<t>``
  (spikes per neuron at each time step), ``grad_available/<layer>`` (share inside the
  gradient-available interval), ``alpha_used/<layer>`` (the sharpness the backward uses;
  DS-ATGO: ``1 / width``), ``threshold/<layer>`` (DS-ATGO: the thresholds in use), and the
  histograms ``potential/<layer>`` of the sampled pre-fire membrane potentials.
  Learned alphas and DS-ATGO threshold EMAs per layer and step are the ``neurons/alpha/...``
  and ``neurons/theta_ema/...`` scalars the training loop already writes.
- ``write_figures(step, directory)``: every end-of-run PNG there as an image ``figures/<name>``.
- ``write_hparams(config, summary)``: the flattened config as hparams (HParams dashboard),
  with the summary's numbers as its metrics (tags ``summary/<name>``), in the same run.
``write_figures_run(workdir, figures_dir, step)`` writes the figures from ``run.run``'s report
(a second event file in the same ``tensorboard/`` run directory: TensorBoard shows one run).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

FIGURES = ("curves.png", "firing_rates.png", "membrane_hist.png", "grad_available.png",
           "alphas.png")


def flat_hparams(config: Any) -> dict[str, Any]:
  """``ConfigDict`` (or nested dict) -> ``{"a.b": value}`` of str / bool / int / float."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  out: dict[str, Any] = {}

  def walk(prefix: str, node: Any) -> None:
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(node, (bool, int, float, str)):
      out[prefix] = node
    elif node is None:
      out[prefix] = "None"
    else:
      out[prefix] = str(tuple(node) if isinstance(node, list) else node)
  walk("", tree)
  return out


class TensorBoardSummaries:
  """Mixin: see the module docstring. Needs ``enabled``, ``_tb`` and ``write``."""

  _lr_schedule: Callable[[int], Any] | None = None

  def track_learning_rate(self, schedule: Callable[[int], Any]) -> None:
    self._lr_schedule = schedule

  def write_learning_rate(self, step: int) -> None:
    if not self.enabled or self._lr_schedule is None:
      return
    lr = float(np.asarray(self._lr_schedule(max(int(step) - 1, 0))))
    self.write(step, "optimizer", {"learning_rate": lr})

  def write_spiking_stats(self, step: int, stats: Any) -> None:
    if not self.enabled:
      return
    step = int(step)
    for i, name in enumerate(stats.names):
      rate_T = np.asarray(stats.rate_LT[i], np.float64)
      self._tb.add_scalar(f"firing_rate/{name}", float(rate_T.mean()), step)
      for t, r in enumerate(rate_T):
        self._tb.add_scalar(f"firing_rate_t/{name}/{t}", float(r), step)
      self._tb.add_scalar(f"grad_available/{name}",
                          float(np.mean(stats.grad_share_LT[i])), step)
      self._tb.add_scalar(f"alpha_used/{name}", float(np.mean(stats.alpha_LT[i])), step)
      if stats.specs[i].adaptive:
        self._tb.add_scalar(f"threshold/{name}", float(np.mean(stats.theta_LT[i])), step)
      samples = np.asarray(stats.samples[i], np.float32).ravel()
      if samples.size:
        self._tb.add_histogram(f"potential/{name}", samples, step, bins="auto")

  def write_figures(self, step: int, directory: str | os.PathLike,
                    names: tuple[str, ...] = FIGURES) -> list[str]:
    if not self.enabled:
      return []
    from PIL import Image
    written = []
    for name in names:
      path = os.path.join(os.fspath(directory), name)
      if not os.path.exists(path):
        continue
      with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((1600, 1600))  # 300 dpi figures: TensorBoard needs no more pixels
        pixels = np.asarray(im)
      self._tb.add_image(f"figures/{os.path.splitext(name)[0]}", pixels, int(step),
                         dataformats="HWC")
      written.append(name)
    return written

  def write_hparams(self, config: Any, summary: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    from tensorboardX.summary import hparams
    metrics = {f"summary/{k}": float(v) for k, v in summary.items()
               if isinstance(v, (int, float, np.floating, np.integer))
               and not isinstance(v, bool)}
    exp, ssi, sei = hparams(flat_hparams(config), metrics)
    writer = self._tb._get_file_writer()
    for s in (exp, ssi, sei):
      writer.add_summary(s)


class _FiguresWriter(TensorBoardSummaries):
  def __init__(self, tb):
    self.enabled, self._tb = True, tb


def write_figures_run(workdir: str | os.PathLike, figures_dir: str | os.PathLike,
                      step: int) -> list[str]:
  """The end-of-run PNGs in ``figures_dir`` as images into ``workdir/tensorboard`` through a
  second event file of the same run (the loop's writer has its own); process 0 only (after
  ``MetricWriter`` registered the object-store backends). Returns the names written."""
  from tensorboardX import SummaryWriter
  tb = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"),
                     filename_suffix=".figures")
  try:
    return _FiguresWriter(tb).write_figures(int(step), figures_dir)
  finally:
    tb.close()
