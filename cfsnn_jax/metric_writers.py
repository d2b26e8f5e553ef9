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
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Mapping

import numpy as np
from etils import epath

from cfsnn_jax import run_paths

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
  path = run_paths.workdir_path(workdir) / METRICS_FILE
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

from cfsnn_jax.tensorboard_summaries import TensorBoardSummaries


class MetricWriter(TensorBoardSummaries):  # + learning rate, per-layer stats, figures, hparams

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    root = run_paths.workdir_path(workdir)
    self.path = root / METRICS_FILE
    self._local = run_paths.is_local(root)
    try:
      root.mkdir(parents=True, exist_ok=True)
      old = _parse(self.path, self.path.read_text()) if self.path.exists() else []
      kept = [r for r in old if r["step"] <= start_step and r["split"] != "summary"]
      self._rows = [json.dumps(r) for r in kept]  # remote: the whole file, rewritten on flush
      if self.path.exists():
        run_paths.write_text_atomic(self.path, "".join(l + "\n" for l in self._rows))
      if self._local:
        self._jsonl = open(self.path, "a", buffering=1)
    except OSError as e:
      raise run_paths.fs_error(self.path, e) from None
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
      raise run_paths.fs_error(self.path, e) from None
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
      raise run_paths.fs_error(self.path, e) from None
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.flush()
      if self._local:
        self._jsonl.close()
      self._tb.close()
