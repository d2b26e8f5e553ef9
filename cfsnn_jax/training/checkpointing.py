"""Orbax checkpoints of the whole training state plus the grain iterator state, verified.

Contract: ``open_manager(directory, *, read_only, keep)`` -> an ``ocp.CheckpointManager`` on
``directory`` (a local path or a ``gs://`` URI, through ``etils.epath``) with two items,
``state`` (parameters, model state, optimizer state, step) and ``data`` (the
grain iterator's state); ``make_manager(workdir, keep)`` opens ``workdir/checkpoints``. Orbax
writes each step into a temporary directory and renames it when complete, so an interrupted
save never becomes the latest checkpoint.

``save(manager, step, state, data_iter, metadata)`` stores, in the step's custom metadata, a
SHA-256 of the state's leaves (path, dtype, shape and bytes of each, in path order) and the
caller's ``metadata`` (the run's history and description). ``restore_newest_intact(manager,
template, data_iter)`` -> ``Restored(state, step, metadata)`` tries the steps newest first:
a step that fails to restore (any orbax / tensorstore error, an empty directory, missing
metadata, a checksum that does not match the restored values) is reported in one line on
stderr, moved aside to ``<workdir>/checkpoints_damaged/`` and the next older step is tried;
if none restores, one line says so (``UserError``). The data iterator's position is restored
after the state, on its own: when it does not restore (its file damaged or of another format)
that is said in one line naming it, the state of that step still resumes and the iterator
starts afresh. A full or read-only disk under a save is
one line too (``save`` / ``finish``); orbax's own log records of it (tracebacks from its
background threads) are dropped. A checkpoint whose tree or shapes do not match the model
is not damage: it fails with one line naming the mismatch. With no checkpoint it returns
the template, step 0 and ``{}``. ``restore_latest`` is the ``(state, step)`` shorthand.
The run description saved with each finished step is read back by
``workdir.stored_runs`` (compared with the command's before resuming).
``init_from(other_workdir, state)``
takes parameters and model state (not the optimizer state or step) from another run's
newest intact checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from cfsnn_jax.training import workdir as workdir_lib
from cfsnn_jax.errors import UserError

CHECKSUM_KEY = "state_sha256"
STEP_METADATA_FILE = workdir_lib.STEP_METADATA_FILE
DAMAGED_DIR = "checkpoints_damaged"


class Restored(NamedTuple):
  state: Any
  step: int
  metadata: dict


class MismatchError(UserError):
  """The checkpoint is intact but belongs to another model/config."""


def open_manager(directory: Any, *, read_only: bool, keep: int = 2
                 ) -> ocp.CheckpointManager:
  """The one place a manager is opened: read-write, or read-only (never writes or cleans, for
  a workdir a run may still be writing)."""
  directory = workdir_lib.workdir_path(directory)
  _quiet_orbax_storage_logs()
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
  try:
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))
  except OSError as e:
    raise workdir_lib.fs_error(directory, e) from None


def make_manager(workdir: Any, keep: int = 2) -> ocp.CheckpointManager:
  return open_manager(workdir_lib.workdir_path(workdir) / "checkpoints", read_only=False, keep=keep)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def _host_array(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)  # replicated state: this process's copy
  return np.asarray(x)


def state_checksum(state: Any) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes, in path order."""
  h = hashlib.sha256()
  leaves = sorted(((_path_str(p), v) for p, v in jax.tree_util.tree_leaves_with_path(state)),
                  key=lambda kv: kv[0])
  for name, leaf in leaves:
    a = np.ascontiguousarray(_host_array(leaf))
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
  return h.hexdigest()


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         metadata: dict | None = None) -> None:
  custom = dict(metadata or {}, **{CHECKSUM_KEY: state_checksum(state)})
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter)), custom_metadata=custom)
  except Exception as e:  # noqa: BLE001
    error = _storage_error(manager, e)
    if error is e:
      raise
    raise error from None


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the asynchronous saves and closes ``manager`` (disk errors: one line)."""
  try:
    manager.wait_until_finished()
    manager.close()
  except Exception as e:  # noqa: BLE001
    error = _storage_error(manager, e)
    if error is e:
      raise
    raise error from None


_STORAGE = (("No space left", "ENOSPC"), ("Read-only file system", "EROFS"),
            ("Disk quota exceeded", "EDQUOT"))


def _storage_cause(e: BaseException | None) -> OSError | None:
  """The full / read-only disk under orbax's and tensorstore's wrappers of ``e``, if any."""
  cause = e
  while cause is not None:
    if isinstance(cause, OSError) and cause.errno is not None:
      return cause
    text = str(cause)
    for needle, errno_name in _STORAGE:
      if needle in text:
        import errno
        return OSError(getattr(errno, errno_name), needle)
    cause = cause.__cause__ or cause.__context__
  return None


def _storage_error(manager: ocp.CheckpointManager, e: BaseException) -> BaseException:
  """A one-line ``UserError`` for a full / read-only disk under orbax's wrappers, else ``e``."""
  cause = _storage_cause(e)
  return e if cause is None else workdir_lib.fs_error(manager.directory, cause)


class _QuietStorageErrors(logging.Filter):
  """Drops orbax's log records (each a traceback from a background save thread) of a full or
  read-only disk: the failed save reaches the caller, which reports it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if "orbax" not in (record.pathname or ""):
      return True
    text = record.getMessage()
    if any(needle in text for needle, _ in _STORAGE):
      return False
    return _storage_cause(record.exc_info[1] if record.exc_info else None) is None


def _quiet_orbax_storage_logs() -> None:
  logger = logging.getLogger("absl")  # orbax logs through absl.logging
  if not any(isinstance(f, _QuietStorageErrors) for f in logger.filters):
    logger.addFilter(_QuietStorageErrors())


def _abstract(state: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def check_compatible(manager: ocp.CheckpointManager, step: int, template: Any) -> None:
  """Compares the saved tree (paths, shapes, dtypes) with the template, reading metadata only;
  raises a one-line ``MismatchError`` naming the first difference (an unreadable metadata
  file raises whatever orbax raises: the caller treats that as damage)."""
  where = f"checkpoint step {step} in {manager.directory}"
  state_dir = epath.Path(manager.directory) / str(step) / "state"
  md = ocp.StandardCheckpointer().metadata(state_dir)
  saved = {_path_str(p): (tuple(v.shape), str(v.dtype)) for p, v in
           jax.tree_util.tree_leaves_with_path(getattr(md, "item_metadata", md))}
  if not saved:
    raise FileNotFoundError(f"{state_dir} has no array metadata")
  want = {}
  for p, v in jax.tree_util.tree_leaves_with_path(_abstract(template)):
    key = _path_str(p)
    key = key[:-len("/value")] if key.endswith("/value") and key not in saved else key
    want[key] = (tuple(v.shape), str(v.dtype))
  missing = sorted(set(want) - set(saved))
  extra = sorted(set(saved) - set(want))
  if missing or extra:
    what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
    raise MismatchError(f"{where} does not match this model/config: {what} "
                        f"({len(missing)} missing, {len(extra)} unexpected entries)")
  for key, (shape, dtype) in sorted(want.items(), key=lambda kv: (not kv[0].startswith("params"),
                                                                  kv[0])):
    if saved[key][0] != shape:
      raise MismatchError(f"{where} does not match this model/config: {key} has shape "
                          f"{saved[key][0]} in the checkpoint, {shape} in the model")


def restore(manager: ocp.CheckpointManager, step: int, template: Any,
            data_iter: Any | None) -> Any:
  """The state of ``step``, no fallback: a mismatch or an unreadable step is one line."""
  try:
    state = _restore_step(manager, step, template, None)[0]
    if data_iter is not None:
      manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data_iter)))
    return state
  except UserError:
    raise
  except (ValueError, KeyError, TypeError, OSError) as e:
    raise UserError(f"checkpoint step {step} in {manager.directory} does not restore: "
                    f"{_first_line(e)}") from None


def _restore_step(manager, step, template, data_iter) -> tuple[Any, dict]:
  """``template=None`` restores the saved tree as it is (nested dicts of arrays). The data
  iterator is restored separately (``_restore_data``) after the state proved intact."""
  if template is None:
    items = {"state": ocp.args.StandardRestore()}
  else:
    check_compatible(manager, step, template)
    items = {"state": ocp.args.StandardRestore(_abstract(template))}
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  custom = dict(manager.metadata(step).custom_metadata or {})
  return restored["state"], custom


def _restore_data(manager, step: int, data_iter: Any) -> None:
  """Sets ``data_iter`` to its saved position at ``step``; if that fails, says so in one line
  and leaves the iterator where it was (the run goes on from the restored state)."""
  before = data_iter.get_state()
  try:
    manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(data_iter)))
  except Exception as e:  # noqa: BLE001  any grain / orbax / json error of that one item
    data_iter.set_state(before)
    print(f"cfsnn_jax: the data iterator's saved position at step {step} in "
          f"{manager.directory} does not restore ({_first_line(e)}); resuming the model, "
          "optimizer and step from it with the training data from a fresh iterator (its order "
          "differs from an uninterrupted run's)", file=sys.stderr, flush=True)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  first = text.splitlines()[0].split(" See full TensorStore details")[0] if text else ""
  return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def restore_newest_intact(manager: ocp.CheckpointManager, template: Any,
                          data_iter: Any | None, *, move_damaged: bool = True) -> Restored:
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return Restored(template, 0, {})
  damaged = []
  for step in steps:
    try:
      state, custom = _restore_step(manager, step, template, data_iter)
      want = custom.get(CHECKSUM_KEY)
      if want is None:
        raise ValueError("no checksum in its metadata (_CHECKPOINT_METADATA lost or written "
                         "by an older version)")
      got = state_checksum(state)
      if got != want:
        raise ValueError(f"checksum mismatch: the restored values hash to {got[:12]}..., "
                         f"the saved checksum is {want[:12]}...")
    except MismatchError:
      raise
    except Exception as e:  # noqa: BLE001  any orbax / tensorstore / filesystem error is damage
      print(f"cfsnn_jax: checkpoint step {step} in {manager.directory} does not restore "
            f"({_first_line(e)}); trying the next older step", file=sys.stderr, flush=True)
      damaged.append(step)
      continue
    if damaged and move_damaged:
      _move_aside(manager, damaged)
    if data_iter is not None:
      _restore_data(manager, step, data_iter)
    return Restored(state, int(step), custom)
  raise UserError(f"no checkpoint in {manager.directory} restores (steps "
                  f"{', '.join(map(str, steps))} are all damaged); move the workdir aside "
                  "and start fresh")


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves damaged steps out of the manager's directory, so new saves can reuse the steps."""
  root = epath.Path(manager.directory)
  if jax.process_index() == 0:
    target = root.parent / DAMAGED_DIR
    target.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for step in steps:
      dst = target / f"{step}-{stamp}"
      (root / str(step)).rename(dst)
      print(f"cfsnn_jax: moved the damaged step {step} to {dst}", file=sys.stderr, flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("cfsnn_jax_move_damaged")
  manager.reload()


def restore_latest(manager: ocp.CheckpointManager, template: Any,
                   data_iter: Any | None) -> tuple[Any, int]:
  """Falls back like ``restore_newest_intact`` but moves nothing (safe on read-only managers)."""
  restored = restore_newest_intact(manager, template, data_iter, move_damaged=False)
  return restored.state, restored.step


def init_from(other_workdir: str, state: Any) -> Any:
  """``state`` with ``params`` and ``rest`` replaced by those of ``other_workdir``'s newest
  intact checkpoint (same model required); optimizer state, step and RNG stay fresh, so the
  other run may have used another optimizer, clipping or schedule."""
  directory = workdir_lib.workdir_path(other_workdir) / "checkpoints"
  if not directory.is_dir():
    raise UserError(f"init_from: no checkpoints directory {directory}")
  manager = open_manager(directory, read_only=True)
  if manager.latest_step() is None:
    raise UserError(f"init_from: {directory} holds no finished checkpoint")
  # the saved tree as it is: its opt_state need not match this run's optimizer
  restored = restore_newest_intact(manager, None, None, move_damaged=False)
  manager.close()
  where = f"init_from: checkpoint step {restored.step} in {directory}"
  return dict(state, params=_graft(restored.state, state, "params", where),
              rest=_graft(restored.state, state, "rest", where))


def _graft(saved: dict, state: Any, key: str, where: str) -> Any:
  """``state[key]`` with every leaf taken from the saved tree by path; a missing path or
  another shape is a one-line ``MismatchError``."""
  by_path = {f"{key}/{_path_str(p)}": v for p, v in
             jax.tree_util.tree_leaves_with_path(saved.get(key, {}))}

  used = set()

  def take(path, leaf):
    name = f"{key}/{_path_str(path)}"
    name = name if name in by_path else name.removesuffix("/value")
    value = by_path.get(name)
    used.add(name)
    if value is None:
      raise MismatchError(f"{where} does not match this model/config: missing {name}")
    if tuple(np.shape(value)) != tuple(np.shape(leaf)):
      raise MismatchError(f"{where} does not match this model/config: {name} has shape "
                          f"{tuple(np.shape(value))} in the checkpoint, "
                          f"{tuple(np.shape(leaf))} in the model")
    value = np.asarray(value, dtype=leaf.dtype)
    sharding = getattr(leaf, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else value

  grafted = jax.tree_util.tree_map_with_path(take, state[key])
  extra = sorted(set(by_path) - used)
  if extra:
    raise MismatchError(f"{where} does not match this model/config: unexpected {extra[0]} "
                        f"({len(extra)} unexpected entries)")
  return grafted
