"""What stops a run early, and how: preemption signals and the divergence guard.

Contract: ``StopSignals`` (a context manager, main thread only) turns the first SIGTERM /
SIGINT into a flag the training loop polls after each step (it then saves a checkpoint and
raises ``Interrupted``, whose ``exit_status`` is 128 + the signal number); a second signal
exits the process at once. ``tree_finite(tree)`` is a boolean scalar: every floating leaf of
``tree`` is finite (``steps.train_step`` returns it for the loss, the gradient norm and the
updated parameters as ``metrics["finite"]``; ``all_finite`` is the same, jitted).
``first_nonfinite(metrics, state)`` names the first non-finite of the step's loss, its
gradient norm and the state's leaves (path order), for the one line of ``Diverged`` (a
``UserError``). ``agree(flag)`` is process 0's decision on every process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfsnn_jax.errors import UserError


class Diverged(UserError):
  """A non-finite loss, gradient norm or state: the run stopped without saving it."""


class Interrupted(Exception):
  """SIGTERM / SIGINT: the current step was finished and checkpointed; rerun to resume."""

  def __init__(self, signum: int, step: int, workdir: Any):
    self.signum, self.step = signum, step
    self.exit_status = 128 + signum  # the shell convention: 143 SIGTERM, 130 SIGINT
    super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved in "
                     f"{workdir}; rerun the same command to resume")


class StopSignals:
  """First SIGTERM / SIGINT: note it (the loop saves and stops); a second one exits at once."""

  def __init__(self):
    self.received: int | None = None
    self._old = {}

  def _handler(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:
      print(f"cfsnn_jax: second {name}: exiting now without saving", file=sys.stderr,
            flush=True)
      os._exit(128 + signum)
    self.received = signum
    print(f"cfsnn_jax: {name}: finishing the current step and saving a checkpoint "
          "(send it again to exit at once)", file=sys.stderr, flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)


def tree_finite(tree: Any) -> jax.Array:
  """A boolean scalar: every floating leaf of ``tree`` is finite (pure: the train step
  computes it inside its own jit, so the guard costs no extra dispatch per step)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else \
      jnp.bool_(True)


all_finite = jax.jit(tree_finite)


def first_nonfinite(metrics: dict, state: Any) -> str:
  """Names the first non-finite of: the step's loss, its gradient norm, the state's leaves."""
  for name in ("loss", "grad_norm"):
    value = float(jax.device_get(metrics[name]))
    if not np.isfinite(value):
      return f"{name} = {value}"
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    a = np.asarray(jax.device_get(leaf))
    if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
      where = jax.tree_util.keystr(path, simple=True, separator="/")
      return f"{where} has {np.size(a) - np.isfinite(a).sum()} non-finite values"
  return "a non-finite value"


def agree(flag: bool) -> bool:
  """Process 0's decision, on every process (one small collective; single process: as is)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))
