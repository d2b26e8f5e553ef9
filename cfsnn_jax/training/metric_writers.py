"""Scalar metrics to JSONL (``metrics.jsonl``) and TensorBoard (tensorboardX, no TF).

Contract: only process 0 writes; other processes get a writer that does nothing. Each JSONL
line is ``{"step": int, "split": str, <name>: float, ...}``. ``MetricWriter(workdir,
start_step=S)`` continues a run restored at step ``S``: rows of later steps (replayed after
the resume) and ``summary`` rows are dropped from ``metrics.jsonl`` and TensorBoard purges its
events from step ``S + 1`` on, so every step is recorded exactly once. ``flush()`` makes what
was written durable (called with every checkpoint). Every file goes through ``etils.epath``:
on an object store (``gs://``) the JSONL is rewritten as a whole at each flush and the
TensorBoard event file is uploaded by an epath record writer. ``read_metrics(workdir)``
reports a line that does not parse with ``file:line`` on stderr and skips it.

TensorBoard contents beyond scalars live in the mixin ``TensorBoardSummaries``, which
``MetricWriter`` inherits; it uses only the writer's ``enabled``, ``_tb`` (a tensorboardX
``SummaryWriter``) and ``write(step, split, scalars)``, and every method does nothing on a
disabled writer (processes other than 0). What each adds, and its tags:
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

import io
import json
import os
import sys
from typing import Any, Callable, Mapping

import numpy as np
from etils import epath

from cfsnn_jax.training import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"


def _parse(path: epath.Path, text: str, *, report: bool = True) -> list[dict]:
  rows = []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not (isinstance(row, dict) and isinstance(row.get("step"), int) and "split" in row):
        raise ValueError("not a metrics record")
    except ValueError:
      if report:
        print(f"cfsnn_jax: {path}:{number}: not a metrics record, skipped: {line[:60]!r}",
              file=sys.stderr, flush=True)
      continue
    rows.append(row)
  return rows


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  path = workdir_lib.workdir_path(workdir) / METRICS_FILE
  return _parse(path, path.read_text())


class _EpathRecordWriter:
  """tensorboardX record writer for object stores: buffers, uploads the whole file on flush."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathWriterFactory:

  def open(self, path: str) -> _EpathRecordWriter:
    return _EpathRecordWriter(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _register_tensorboard_backends() -> None:
  from tensorboardX import record_writer
  for scheme in ("gs", "s3", "az", "hf"):
    record_writer.register_writer_factory(scheme, _EpathWriterFactory())

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


class MetricWriter(TensorBoardSummaries):  # + learning rate, per-layer stats, figures, hparams

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    root = workdir_lib.workdir_path(workdir)
    self.path = root / METRICS_FILE
    self._local = workdir_lib.is_local(root)
    try:
      root.mkdir(parents=True, exist_ok=True)
      old = _parse(self.path, self.path.read_text()) if self.path.exists() else []
      kept = [r for r in old if r["step"] <= start_step and r["split"] != "summary"]
      self._rows = [json.dumps(r) for r in kept]  # remote: the whole file, rewritten on flush
      if self.path.exists():
        workdir_lib.write_text_atomic(self.path, "".join(l + "\n" for l in self._rows))
      if self._local:
        self._jsonl = open(self.path, "a", buffering=1)
    except OSError as e:
      raise workdir_lib.fs_error(self.path, e) from None
    from tensorboardX import SummaryWriter
    _register_tensorboard_backends()
    tb_dir = root / "tensorboard"
    purge = start_step + 1 if tb_dir.exists() else None
    self._tb = SummaryWriter(os.fspath(tb_dir), purge_step=purge)

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    line = json.dumps(row)
    try:
      if self._local:
        self._jsonl.write(line + "\n")
      else:
        self._rows.append(line)
    except OSError as e:
      raise workdir_lib.fs_error(self.path, e) from None
    for k, v in row.items():
      if k not in ("step", "split"):
        self._tb.add_scalar(f"{split}/{k}", v, int(step))

  def flush(self) -> None:
    if not self.enabled:
      return
    try:
      if self._local:
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
      else:
        self.path.write_text("".join(l + "\n" for l in self._rows))
    except OSError as e:
      raise workdir_lib.fs_error(self.path, e) from None
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.flush()
      if self._local:
        self._jsonl.close()
      self._tb.close()
