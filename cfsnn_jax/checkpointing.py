"""Orbax checkpoints of the whole training state plus the grain iterator state.

Contract: ``open_manager(directory, read_only=..., keep=...)`` is the one place an
``ocp.CheckpointManager`` is opened (read-write, or read-only: never writes or cleans, for a
workdir a run may still be writing); ``make_manager(workdir, keep)`` opens
``workdir/checkpoints`` read-write. Two items, ``state`` (parameters, model state, optimizer
state, step) and ``data`` (the grain iterator's state). Orbax writes each step into a
temporary directory and renames it when complete, so an interrupted save never becomes the
latest checkpoint. ``restore_latest`` returns ``(state, step)``: the restored state placed with
the shardings of the given template and the iterator moved to the saved position, or the
template and 0 when the workdir has no checkpoint. A checkpoint whose tree or shapes do not
match the model fails with one line naming the mismatch. ``init_from(other_workdir, state)``
takes parameters and model state (not the optimizer state or step) from another run's latest
checkpoint, for fine-tuning.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from cfsnn_jax.errors import UserError


def open_manager(directory: str, *, read_only: bool, keep: int = 2) -> ocp.CheckpointManager:
  """The orbax manager over ``directory`` with the items ``state`` and ``data``."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "data"))


def make_manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  return open_manager(os.path.join(workdir, "checkpoints"), read_only=False, keep=keep)


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


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def check_compatible(manager: ocp.CheckpointManager, step: int, template: Any) -> None:
  """Compares the saved tree (paths, shapes, dtypes) with the template, reading metadata only;
  raises a one-line ValueError naming the first difference."""
  where = f"checkpoint step {step} in {manager.directory}"
  state_dir = os.path.join(str(manager.directory), str(step), "state")
  md = ocp.StandardCheckpointer().metadata(state_dir)
  saved = {_path_str(p): (tuple(v.shape), str(v.dtype)) for p, v in
           jax.tree_util.tree_leaves_with_path(getattr(md, "item_metadata", md))}
  want = {}
  for p, v in jax.tree_util.tree_leaves_with_path(_abstract(template)):
    key = _path_str(p)
    key = key[:-len("/value")] if key.endswith("/value") and key not in saved else key
    want[key] = (tuple(v.shape), str(v.dtype))
  missing = sorted(set(want) - set(saved))
  extra = sorted(set(saved) - set(want))
  if missing or extra:
    what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
    raise UserError(f"{where} does not match this model/config: {what} "
                    f"({len(missing)} missing, {len(extra)} unexpected entries)")
  for key, (shape, dtype) in sorted(want.items(), key=lambda kv: (not kv[0].startswith("params"),
                                                                  kv[0])):
    if saved[key][0] != shape:
      raise UserError(f"{where} does not match this model/config: {key} has shape "
                      f"{saved[key][0]} in the checkpoint, {shape} in the model")


def restore(manager: ocp.CheckpointManager, step: int, template: Any,
            data_iter: Any | None) -> Any:
  check_compatible(manager, step, template)
  items = {"state": ocp.args.StandardRestore(_abstract(template))}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"checkpoint step {step} in {manager.directory} does not match this "
                    f"model/config: {first}") from None
  return restored["state"]


def init_from(other_workdir: str, state: Any) -> Any:
  """``state`` with ``params`` and ``rest`` replaced by those of ``other_workdir``'s latest
  checkpoint (same model required); optimizer state and step stay fresh."""
  directory = os.path.abspath(os.path.join(other_workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise UserError(f"init_from: no checkpoints directory {directory}")
  manager = open_manager(directory, read_only=True)
  step = manager.latest_step()
  if step is None:
    raise UserError(f"init_from: {directory} holds no finished checkpoint")
  restored = restore(manager, step, state, None)
  manager.close()
  return dict(state, params=restored["params"], rest=restored["rest"])
