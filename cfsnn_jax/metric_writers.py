"""Scalar metrics to JSONL (``metrics.jsonl``) and TensorBoard (tensorboardX, no TF).

Only process 0 writes; other processes get a writer that does nothing. Each JSONL line is
``{"step": int, "split": str, <name>: float, ...}``.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from cfsnn_jax.tensorboard_summaries import TensorBoardSummaries


class MetricWriter(TensorBoardSummaries):  # + learning rate, per-layer stats, figures, hparams

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k not in ("step", "split"):
        self._tb.add_scalar(f"{split}/{k}", v, int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
