"""Training progress output that suits a terminal and a cluster log alike.

Contract: ``make_progress(total, initial, enabled, every)`` returns an object with tqdm's
``n`` / ``update(k)`` / ``set_postfix(**kw)`` / ``close()``. On a terminal (stderr is a TTY)
it is a tqdm bar; otherwise (SLURM / TPU logs, pipes) there are no redraws: one plain line
``train step 40/880 loss=0.512 acc=0.812 (12.3 steps/s)`` goes to stderr every ``every``
steps and at the last step. ``eval_line(step, total, ev)`` is the one stdout line printed per
evaluation. ``enabled=False`` (other processes, ``config.progress_bar=False``) prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LineProgress:
  """tqdm's interface, printing a line every ``every`` steps instead of redrawing."""

  def __init__(self, total: int, initial: int = 0, every: int = 20, stream: TextIO | None = None,
               desc: str = "train"):
    self.total, self.n, self.every, self.desc = total, initial, max(1, every), desc
    self.stream = stream if stream is not None else sys.stderr
    self._postfix: dict[str, Any] = {}
    self._last_line = initial
    self._due = False
    self._t0, self._n0 = time.perf_counter(), initial

  def update(self, k: int = 1) -> None:
    self.n += k
    if self.n - self._last_line >= self.every or (self.n == self.total and
                                                   self._last_line != self.n):
      self._due = True

  def set_postfix(self, **kw: Any) -> None:
    self._postfix.update(kw)
    if self._due:
      self._line()

  def _line(self) -> None:
    elapsed = max(time.perf_counter() - self._t0, 1e-9)
    rate = (self.n - self._n0) / elapsed
    post = " ".join(f"{k}={v}" for k, v in self._postfix.items())
    print(f"{self.desc} step {self.n}/{self.total} {post} ({rate:.2f} steps/s)".replace("  ",
                                                                                      " "),
          file=self.stream, flush=True)
    self._last_line, self._due = self.n, False

  def close(self) -> None:
    if self._due:
      self._line()


class _Silent:
  def __init__(self, initial: int = 0):
    self.n = initial

  def update(self, k: int = 1) -> None:
    self.n += k

  def set_postfix(self, **kw: Any) -> None:
    pass

  def close(self) -> None:
    pass


def is_terminal(stream: TextIO | None = None) -> bool:
  stream = stream if stream is not None else sys.stderr
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


def make_progress(total: int, initial: int, enabled: bool, every: int, desc: str = "train"):
  """A tqdm bar on a terminal, ``LineProgress`` elsewhere, nothing when not ``enabled``."""
  if not enabled:
    return _Silent(initial)
  if is_terminal():
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, dynamic_ncols=True, desc=desc)
  return LineProgress(total, initial, every, desc=desc)


def eval_line(step: int, total: int, ev: dict) -> str:
  """``eval step 40/880 test_accuracy=0.9123 test_loss=0.3120 firing_rate=0.1021``."""
  return (f"eval step {step}/{total} test_accuracy={ev['accuracy']:.4f} "
          f"test_loss={ev['loss']:.4f} firing_rate={ev['firing_rate']:.4f}")
