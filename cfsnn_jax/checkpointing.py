"""Orbax checkpoints of the whole training state plus the grain iterator state.

Contract: ``make_manager(workdir, keep)`` -> an ``ocp.CheckpointManager`` under
``workdir/checkpoints`` with two items, ``state`` (parameters, model state, optimizer state,
step, RNG key data) and ``data`` (the grain iterator's state). Orbax writes each step into a
temporary directory and renames it when complete, so an interrupted save never becomes the
latest checkpoint. ``restore_latest`` returns ``(state, step)``: the restored state placed with
the shardings of the given template and the iterator moved to the saved position, or the
template and 0 when the workdir has no checkpoint. A checkpoint whose tree or shapes do not
match the model fails with one line naming the mismatch.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter)))


def _abstract(state: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def restore_latest(manager: ocp.CheckpointManager, template: Any,
                   data_iter: Any | None) -> tuple[Any, int]:
  step = manager.latest_step()
  if step is None:
    return template, 0
  return restore(manager, step, template, data_iter), int(step)


def restore(manager: ocp.CheckpointManager, step: int, template: Any,
            data_iter: Any | None) -> Any:
  items = {"state": ocp.args.StandardRestore(_abstract(template))}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"checkpoint step {step} in {manager.directory} does not match this "
                     f"model/config: {first}") from None
  return restored["state"]
