"""Workdir semantics: fresh / interrupted / finished / mismatched, the run description, the lock.

Contract:
- ``inspect(workdir, description) -> Status`` reads (never writes) the workdir and says what
  a run of ``description`` should do there: ``"fresh"`` (no ``config.json``: start),
  ``"resume"`` (same run, not finished: continue from the latest checkpoint) or
  ``"finished"`` (``summary.json`` exists: print it and write nothing). A workdir that holds
  another run (its saved run differs in any field outside ``RUN_ONLY_FIELDS``) raises a
  one-line ``UserError`` naming the first differing field; so do a workdir that is a file,
  an unreadable one and an empty ``--workdir``.
- ``run_description(config)`` -> the resolved run: the config, every field of the resolved
  neuron spec (after the preset), the resolved data options, and the library versions.
  ``comparable(description)`` is the part two runs of one workdir must share (versions and
  run-only fields are left out). Written to ``run.json`` at the start and into each
  checkpoint's metadata. ``summary_line(summary, workdir)`` is the ``final: ...`` line.
- ``WorkdirLock(workdir)``: an exclusive lock file ``run.lock`` holding the owner's host,
  pid, process start time and a random token. ``acquire()`` creates it atomically
  (``O_EXCL`` on local disks); a lock left by a dead process of this host is taken over, a
  live or foreign owner refuses with one line. ``release()`` removes it if it is still ours.
- Paths, the one layer for everything a run reads or writes in its workdir (``etils.epath``):
  ``workdir_path(s)`` turns the ``--workdir`` string into an ``epath.Path`` (local paths are
  made absolute; ``gs://``, ``s3://`` ... stay URIs and go through epath's fsspec backend, the
  same layer orbax uses), rejecting an empty string with one line. ``write_text_atomic``
  writes a whole file so that a reader sees the old or the new content, never half (local:
  temporary file + ``os.replace``; object stores: a single object upload is already atomic).
  ``fs_error(path, exc)`` turns an ``OSError`` (not a directory, read-only, disk full, ...)
  into a one-line ``UserError`` naming the path. ``staged_dir(workdir, inputs)`` gives code
  that only knows local files (matplotlib, the analysis report) a local directory: the
  workdir itself when it is local, otherwise a temporary copy of ``inputs`` whose files are
  uploaded into the workdir on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Any

from etils import epath

from cfsnn_jax.errors import UserError

_REASONS = {errno.ENOTDIR: "is not a directory (a file is in the way)",
            errno.EEXIST: "already exists and is not a directory",
            errno.EACCES: "is not writable (permission denied)",
            errno.EPERM: "is not writable (operation not permitted)",
            errno.EROFS: "is on a read-only filesystem",
            errno.ENOSPC: "cannot be written: no space left on the device",
            errno.EDQUOT: "cannot be written: disk quota exceeded",
            errno.ENOENT: "does not exist"}


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
  text = os.fspath(workdir).strip() if workdir is not None else ""
  if not text:
    raise UserError("--workdir is empty; give a directory (local or gs://bucket/dir), or "
                    "leave the flag out for a fresh timestamped one")
  path = epath.Path(text)
  return path if not is_local(path) else epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_local(path: epath.Path | str) -> bool:
  """True for paths on the local filesystem (no ``scheme://``)."""
  return "://" not in os.fspath(path)


def fs_error(path: epath.Path | str, exc: BaseException) -> UserError:
  """A one-line ``UserError`` for a filesystem failure at ``path``."""
  code = getattr(exc, "errno", None)
  if isinstance(exc, NotADirectoryError):
    code = errno.ENOTDIR
  elif isinstance(exc, PermissionError) and code is None:
    code = errno.EACCES
  reason = _REASONS.get(code)
  if reason is None:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"cannot be used: {type(exc).__name__}" + (f": {first}" if first else "")
  return UserError(f"{path} {reason}")


def write_text_atomic(path: epath.Path, text: str) -> None:
  try:
    if is_local(path):
      tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
      with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, os.fspath(path))
    else:
      path.write_text(text)
  except OSError as e:
    raise fs_error(path, e) from None


@contextlib.contextmanager
def staged_dir(workdir: epath.Path, inputs: Sequence[str] = ()) -> Iterator[str]:
  """A local directory standing for ``workdir`` (see the module docstring)."""
  if is_local(workdir):
    yield os.fspath(workdir)
    return
  local = tempfile.mkdtemp(prefix="cfsnn_stage_")
  try:
    for name in inputs:
      if (workdir / name).exists():
        with open(os.path.join(local, name), "wb") as f:
          f.write((workdir / name).read_bytes())
    before = {n: os.path.getmtime(os.path.join(local, n)) for n in os.listdir(local)}
    yield local
    for root, _, files in os.walk(local):
      for name in files:
        src = os.path.join(root, name)
        rel = os.path.relpath(src, local)
        if before.get(rel) == os.path.getmtime(src):
          continue  # an input left unchanged
        dst = workdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as f:
          dst.write_bytes(f.read())
  finally:
    shutil.rmtree(local, ignore_errors=True)


# Fields that change how a run reports or saves, never what it computes: they may differ
# between the runs of one workdir (README "Runs and workdirs"). Not ``data_workers``: the data
# iterator's checkpointed state has another format with worker processes (grain mp_prefetch),
# so a resume with another worker count would find every checkpoint unrestorable.
RUN_ONLY_FIELDS = frozenset({
    "progress_bar", "log_every_steps", "analysis_report", "keep_checkpoints",
    "checkpoint_every_steps", "checkpoint_every_seconds"})

CONFIG_FILE, RUN_FILE, SUMMARY_FILE, LOCK_FILE = ("config.json", "run.json", "summary.json",
                                                  "run.lock")
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


@dataclasses.dataclass(frozen=True)
class Status:
  kind: str  # fresh | resume | finished
  path: epath.Path
  summary: dict | None = None  # the stored summary of a finished run


def library_versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def run_description(config: Any) -> dict:
  from cfsnn_jax import data  # config_schema imports the registries
  from cfsnn_jax.config import schema as config_schema
  try:
    data_opts = data.data_options(config, config.dataset).to_dict()
  except (ValueError, KeyError):
    data_opts = None
  description = {"config": json.loads(config.to_json()),
                 "neuron_spec": dataclasses.asdict(config_schema.neuron_spec(config.neuron)),
                 "data_options": data_opts, "versions": library_versions()}
  return json.loads(json.dumps(description, default=str))  # as saved: tuples become lists


def comparable(description: dict) -> dict:
  """The flattened fields two runs of one workdir must share."""
  flat = {}
  for section in ("config", "neuron_spec", "data_options"):
    if description.get(section) is not None:
      _flatten(description[section], section if section != "config" else "", flat)
  return {k: v for k, v in flat.items() if k not in RUN_ONLY_FIELDS}  # top-level config keys


def _flatten(tree: Any, prefix: str, out: dict) -> None:
  if isinstance(tree, dict):
    for k in sorted(tree):
      _flatten(tree[k], f"{prefix}.{k}" if prefix else str(k), out)
  else:
    out[prefix] = tree


def first_difference(saved: dict, wanted: dict) -> str | None:
  for key in sorted(set(saved) | set(wanted)):
    if saved.get(key, "<absent>") != wanted.get(key, "<absent>"):
      return (f"{key} is {json.dumps(saved.get(key, '<absent>'))} there, "
              f"{json.dumps(wanted.get(key, '<absent>'))} here")
  return None


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON (line {e.lineno}); move the workdir aside or "
                    "pick another --workdir") from None
  except OSError as e:
    raise fs_error(path, e) from None


def inspect(workdir: epath.Path, description: dict) -> Status:
  try:
    exists = workdir.exists()
    if exists and not workdir.is_dir():
      raise UserError(f"--workdir {workdir} is a file, not a directory; pick another --workdir")
    has_config = exists and (workdir / CONFIG_FILE).exists()
  except OSError as e:
    raise fs_error(workdir, e) from None
  if not has_config:
    return Status("fresh", workdir)
  saved = {"config": _read_json(workdir / CONFIG_FILE)}
  if (workdir / RUN_FILE).exists():
    saved = _read_json(workdir / RUN_FILE)
  wanted = description if "neuron_spec" in saved else {"config": description["config"]}
  diff = first_difference(comparable(saved), comparable(wanted))
  if diff and not (workdir / SUMMARY_FILE).exists() and not _has_checkpoint(workdir):
    # a run that stopped before its first checkpoint (a wrong data_dir, a failed init_from)
    # holds nothing to resume: the corrected command starts afresh instead of being refused
    print(f"cfsnn_jax: {workdir} holds a run that stopped before its first checkpoint "
          f"({diff}); starting afresh", file=sys.stderr, flush=True)
    return Status("fresh", workdir)
  if diff:
    raise UserError(f"--workdir {workdir} holds another run: {diff}; pass a new --workdir "
                    "(or leave it out) to start fresh, or rerun with that run's settings "
                    "to resume it")
  if (workdir / SUMMARY_FILE).exists():
    return Status("finished", workdir, _read_json(workdir / SUMMARY_FILE))
  return Status("resume", workdir)


def _has_checkpoint(workdir: epath.Path) -> bool:
  """Whether ``workdir/checkpoints`` holds a finished orbax step (a directory named by digits;
  unfinished saves carry a temporary suffix)."""
  directory = workdir / "checkpoints"
  try:
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())
  except OSError as e:
    raise fs_error(directory, e) from None


def write_description(workdir: epath.Path, description: dict, status: Status) -> None:
  """``config.json`` and ``run.json`` on a fresh start; on resume a new entry in ``starts``."""
  start = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": socket.gethostname(), "pid": os.getpid(), "argv": sys.argv,
           "versions": description["versions"]}
  if status.kind == "fresh" or not (workdir / RUN_FILE).exists():
    run = dict(description, starts=[start])
    write_text_atomic(workdir / CONFIG_FILE,
                                json.dumps(description["config"], indent=2) + "\n")
  else:
    run = _read_json(workdir / RUN_FILE)
    run.setdefault("starts", []).append(start)
  write_text_atomic(workdir / RUN_FILE, json.dumps(run, indent=2) + "\n")


def _process_start_time(pid: int) -> str | None:
  """The kernel's start time of ``pid`` (Linux), to tell a reused pid from the owner."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start_time: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  now = _process_start_time(pid)
  return start_time is None or now is None or now == start_time


class WorkdirLock:
  """See the module docstring. Use as ``with WorkdirLock(path):`` or acquire/release."""

  def __init__(self, workdir: epath.Path):
    self.path = workdir / LOCK_FILE
    self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                  "start_time": _process_start_time(os.getpid()), "token": uuid.uuid4().hex}
    self.held = False

  def _create(self) -> bool:
    text = json.dumps(self.owner)
    if is_local(self.path):
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    if self.path.exists():  # object stores: no O_EXCL through epath; write, then read back
      return False
    self.path.write_text(text)
    return json.loads(self.path.read_text()).get("token") == self.owner["token"]

  def _read_owner(self) -> dict:
    try:
      return json.loads(self.path.read_text())
    except (OSError, json.JSONDecodeError):
      return {}

  def acquire(self) -> "WorkdirLock":
    try:
      for _ in range(3):
        if self._create():
          self.held = True
          return self
        owner = self._read_owner()
        if not owner:
          continue  # being written or just released: try again
        if owner.get("host") == self.owner["host"] and not _alive(
            int(owner.get("pid", -1)), owner.get("start_time")):
          stale = self.path.parent / f"{LOCK_FILE}.stale-{owner.get('pid')}"
          try:
            self.path.rename(stale)
          except (FileNotFoundError, FileExistsError):
            continue
          if json.loads(stale.read_text()).get("token") != owner.get("token"):
            stale.rename(self.path)  # not the stale lock we read: put it back
            continue
          stale.unlink(missing_ok=True)
          print(f"cfsnn_jax: took over the stale lock of dead process {owner.get('pid')} "
                f"in {self.path.parent}", file=sys.stderr, flush=True)
          continue
        raise UserError(f"--workdir {self.path.parent} is in use by pid {owner.get('pid')} on "
                        f"host {owner.get('host')} (lock file {self.path}); wait for that run, "
                        "or delete the lock file if it is dead")
    except OSError as e:
      raise fs_error(self.path.parent, e) from None
    raise UserError(f"could not take the lock {self.path}; another run is starting there")

  def release(self) -> None:
    if self.held:
      self.held = False
      if self._read_owner().get("token") == self.owner["token"]:
        self.path.unlink(missing_ok=True)

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def summary_line(summary: dict, workdir: Any) -> str:
  """The ``final: ...`` line of a run's summary (printed at the end and for a finished run)."""
  energy = (f"energy={summary['energy_mj_per_image']:.3g}mJ/image "
            if "energy_mj_per_image" in summary else "")
  return (f"final: test_accuracy={summary['test_accuracy']:.4f} "
          f"best_test_accuracy={summary['best_test_accuracy']:.4f} "
          f"firing_rate={summary['test_firing_rate']:.4f} {energy}"
          f"train_time={summary['train_time_s']:.1f}s "
          f"images/s={summary['images_per_s']:.0f} workdir={workdir}")
