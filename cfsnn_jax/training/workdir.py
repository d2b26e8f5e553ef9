"""Workdir semantics: fresh / interrupted / finished / mismatched, the run description, the lock.

Contract:
- ``inspect(workdir, description) -> Status`` reads (never writes) the workdir and says what a
  run of ``description`` should do there: ``"fresh"`` (no ``config.json``, ``run.json`` or
  checkpoint: start), ``"resume"`` (same run, not finished: continue from the latest checkpoint)
  or ``"finished"`` (``summary.json`` exists: print it and write nothing). A workdir that holds
  another run (its saved run differs in any field outside ``RUN_ONLY_FIELDS``) raises a one-line
  ``UserError`` naming the first differing field; so does a checkpoint whose stored run differs
  from ``description`` (whatever ``config.json`` / ``run.json`` say, or if they were deleted:
  they are rewritten on resume), a ``config.json`` that disagrees with ``run.json`` (a hand
  edit), a workdir that is a file, an unreadable one and an empty ``--workdir``.
- ``run_description(run)`` -> what a resolved run (``cfsnn_jax.config.resolve``) records:
  the config, every field of its neuron spec (after the preset), its data options, and the
  library versions.
  ``comparable(description)`` is the part two runs of one workdir must share (versions and
  run-only fields are left out). Written to ``run.json`` at the start and into each
  checkpoint's metadata. ``write_summary(workdir, summary)`` writes ``summary.json`` (the
  finished marker ``inspect`` reads); ``summary_line(summary, workdir)`` is the ``final: ...``
  line.
- ``WorkdirLock(workdir)``: an exclusive lock file ``run.lock`` holding the owner's host,
  pid, process start time and a random token. ``acquire()`` creates it atomically and whole
  (written and fsynced under a temporary name, then hard-linked; a failed write, a full disk,
  leaves no lock behind); a lock left by a dead process of this host is taken over, a live
  or foreign owner refuses with one line. A lock naming no owner (empty, not JSON, not an
  object) is taken over once ``STALE_LOCK_SECONDS`` old, else refused with one line (owner
  unknown, its age, how to clear it); a directory in its place is refused. ``release()``
  removes it if it is still ours.
- Paths, the one layer for everything a run reads or writes in its workdir (``etils.epath``):
  ``workdir_path(s)`` turns the ``--workdir`` string into an ``epath.Path`` (local paths are
  made absolute; ``gs://``, ``s3://`` ... stay URIs and go through epath's fsspec backend, the
  same layer orbax uses), rejecting an empty string with one line. ``write_text_atomic``
  writes a whole file so that a reader sees the old or the new content, never half (local:
  temporary file + ``os.replace``; object stores: a single object upload is already atomic).
  ``fs_error(path, exc)`` turns an ``OSError`` (not a directory, read-only, disk full, ...)
  into a one-line ``UserError`` naming the path (a full disk or quota reads ``no space left
  on device: <path> (...)`` with the remedy); a failed ``write_text_atomic`` removes its
  temporary file. ``staged_dir(workdir, inputs)`` gives code
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
import time
import uuid
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Any

from etils import epath

from cfsnn_jax.errors import UserError

# Full disks lead the line (the message the user greps for), with the remedy after the path.
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_REASONS = {errno.ENOTDIR: "is not a directory (a file is in the way)",
            errno.EEXIST: "already exists and is not a directory",
            errno.EACCES: "is not writable (permission denied)",
            errno.EPERM: "is not writable (operation not permitted)",
            errno.EROFS: "is on a read-only filesystem",
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
  if code in _FULL:
    return UserError(f"{_FULL[code]}: {path} (free space there, then rerun the same command: "
                     "it continues from the last checkpoint)")
  reason = _REASONS.get(code)
  if reason is None:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"cannot be used: {type(exc).__name__}" + (f": {first}" if first else "")
  return UserError(f"{path} {reason}")


def write_text_atomic(path: epath.Path, text: str) -> None:
  tmp = f"{os.fspath(path)}.tmp-{os.getpid()}" if is_local(path) else None
  try:
    if tmp is not None:
      with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, os.fspath(path))
    else:
      path.write_text(text)
  except OSError as e:
    if tmp is not None:  # a full disk must not leave the half-written temporary behind
      with contextlib.suppress(OSError):
        os.unlink(tmp)
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
# ``model.remat`` changes only what the backward pass keeps in memory: every mode builds the
# same state tree (tests/test_resume_edges.py checks each model family), so a run may resume
# with another; were a tree to differ, the restore's tree check refuses it in one line.
RUN_ONLY_FIELDS = frozenset({
    "progress_bar", "log_every_steps", "analysis_report", "keep_checkpoints",
    "checkpoint_every_steps", "checkpoint_every_seconds", "model.remat"})

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


# Model fields added after workdirs were written, that change what a model computes: the
# value a run takes when its config leaves the field out (written into run.json explicitly)
# and the value every run written before the field existed had (a stored run without it).
_RESNETS = ("resnet19", "resnet18", "resnet20")
ADDED_MODEL_FIELDS = {
    # field: (models that take it, default now, what earlier runs computed)
    "conv_padding": (_RESNETS, "symmetric", "flax_same"),
    "head_form": (_RESNETS, "biased", "biased"),
}


def _explicit_model_fields(config: dict) -> None:
  """Each added field a model takes, written with today's default where the config omits it."""
  model = config.get("model", {})
  for field, (names, now, _) in ADDED_MODEL_FIELDS.items():
    if model.get("name") in names:
      model.setdefault(field, now)


def run_description(run: Any) -> dict:
  """What ``run.json`` holds for a resolved run (``cfsnn_jax.config.ResolvedRun``)."""
  description = {"config": json.loads(run.config.to_json()),
                 "neuron_spec": dataclasses.asdict(run.neuron),
                 "data_options": run.data_options, "versions": library_versions()}
  _explicit_model_fields(description["config"])  # the default may change again
  return json.loads(json.dumps(description, default=str))  # as saved: tuples become lists


def comparable(description: dict) -> dict:
  """The flattened fields two runs of one workdir must share (a stored run without a field of
  ``ADDED_MODEL_FIELDS`` has the value runs had before it existed)."""
  flat = {}
  for section in ("config", "neuron_spec", "data_options"):
    if description.get(section) is not None:
      _flatten(description[section], section if section != "config" else "", flat)
  for field, (names, _, before) in ADDED_MODEL_FIELDS.items():
    if flat.get("model.name") in names:
      flat.setdefault(f"model.{field}", before)
  return {k: v for k, v in flat.items() if k not in RUN_ONLY_FIELDS}  # top-level config keys


def _flatten(tree: Any, prefix: str, out: dict) -> None:
  if isinstance(tree, dict):
    for k in sorted(tree):
      _flatten(tree[k], f"{prefix}.{k}" if prefix else str(k), out)
  else:
    out[prefix] = tree


def first_difference(saved: dict, wanted: dict, there: str = "there",
                     here: str = "here") -> str | None:
  for key in sorted(set(saved) | set(wanted)):
    if saved.get(key, "<absent>") != wanted.get(key, "<absent>"):
      return (f"{key} is {json.dumps(saved.get(key, '<absent>'))} {there}, "
              f"{json.dumps(wanted.get(key, '<absent>'))} {here}")
  return None


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON (line {e.lineno}); move the workdir aside or "
                    "pick another --workdir") from None
  except OSError as e:
    raise fs_error(path, e) from None


STEP_METADATA_FILE = "_CHECKPOINT_METADATA"  # orbax's per-step metadata (custom_metadata)


def stored_runs(directory: Any) -> list[tuple[int, dict]]:
  """``(step, run description)`` of every finished step in ``directory`` that stores one,
  newest first (reads orbax's step metadata file only; a step whose file does not read is
  left out: restoring it reports the damage)."""
  directory = workdir_path(directory)
  try:
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()),
                   reverse=True) if directory.is_dir() else []
  except OSError as e:
    raise fs_error(directory, e) from None
  out = []
  for step in steps:
    try:
      custom = json.loads((directory / str(step) / STEP_METADATA_FILE).read_text()).get(
          "custom_metadata") or {}
    except (OSError, ValueError, AttributeError):
      continue
    if isinstance(custom.get("run"), dict):
      out.append((step, custom["run"]))
  return out



def inspect(workdir: epath.Path, description: dict) -> Status:
  try:
    exists = workdir.exists()
    if exists and not workdir.is_dir():
      raise UserError(f"--workdir {workdir} is a file, not a directory; pick another --workdir")
    has_config = exists and (workdir / CONFIG_FILE).exists()
    has_run = exists and (workdir / RUN_FILE).exists()
  except OSError as e:
    raise fs_error(workdir, e) from None
  # the run stored with each checkpoint: a deleted or replaced config.json / run.json cannot
  # pass another run's state off as this one's
  stored = stored_runs(workdir / "checkpoints") if exists else []
  for step, run in stored:
    diff = first_difference(comparable(run), comparable(description),
                            there=f"in its checkpoint step {step}", here="here")
    if diff:
      raise UserError(f"--workdir {workdir} holds another run: {diff}; pass a new --workdir "
                      "(or leave it out) to start fresh, or rerun with that run's settings "
                      "to resume it")
  if not (has_config or has_run):  # both deleted: the checkpoints say whose workdir it is
    if not stored:
      return Status("fresh", workdir)
    if (workdir / SUMMARY_FILE).exists():
      return Status("finished", workdir, _read_json(workdir / SUMMARY_FILE))
    return Status("resume", workdir)
  saved = _read_json(workdir / RUN_FILE) if has_run else None
  if has_config:
    config = _read_json(workdir / CONFIG_FILE)
    if saved is not None:
      diff = first_difference(comparable({"config": config}),
                              comparable({"config": saved.get("config")}),
                              there=f"in {CONFIG_FILE}", here=f"in {RUN_FILE}")
      if diff:
        raise UserError(f"{workdir / CONFIG_FILE} disagrees with {RUN_FILE} (edited by hand?): "
                        f"{diff}; config.json is the copy of run.json's config written at the "
                        "start: undo the edit, or delete config.json (it is rewritten from "
                        "run.json)")
    else:
      saved = {"config": config}
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
  else:
    run = _read_json(workdir / RUN_FILE)
    run.setdefault("starts", []).append(start)
  if status.kind == "fresh" or not (workdir / CONFIG_FILE).exists():  # deleted: rewritten
    write_text_atomic(workdir / CONFIG_FILE,
                                json.dumps(run["config"], indent=2) + "\n")
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


STALE_LOCK_SECONDS = 30.0  # an unreadable lock file this old has no live writer


def _age(seconds: float) -> str:
  return f"{seconds:.0f} s" if seconds < 120 else (
      f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")


class WorkdirLock:
  """See the module docstring. Use as ``with WorkdirLock(path):`` or acquire/release."""

  def __init__(self, workdir: epath.Path):
    self.path = workdir / LOCK_FILE
    self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                  "start_time": _process_start_time(os.getpid()), "token": uuid.uuid4().hex}
    self.held = False

  def _create(self) -> bool:
    """Creates the lock file whole or not at all: written and fsynced under a temporary
    name, then hard-linked to ``run.lock`` (fails if it exists); a failed write (a full
    disk) removes the temporary. Filesystems without hard links: ``O_EXCL`` + write, and the
    half-written lock is removed on failure."""
    text = json.dumps(self.owner)
    if not is_local(self.path):
      if self.path.exists():  # object stores: no O_EXCL through epath; write, then read back
        return False
      self.path.write_text(text)
      return (self._read_owner()[0] or {}).get("token") == self.owner["token"]
    path = os.fspath(self.path)
    tmp = f"{path}.tmp-{os.getpid()}-{self.owner['token'][:8]}"
    try:
      _write_synced(tmp, text, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      try:
        os.link(tmp, path)
      except FileExistsError:
        return False
      except OSError as e:  # no hard links here (some FUSE / SMB / vfat mounts)
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                           errno.EMLINK):
          raise
        try:
          fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
          return False
        try:
          _write_fd(fd, text)
        except OSError:
          os.unlink(path)
          raise
      return True
    finally:
      with contextlib.suppress(OSError):
        os.unlink(tmp)

  def _read_owner(self) -> tuple[dict | None, str]:
    """``(owner record, "")``, or ``(None, what is wrong)``: ``"gone"`` if there is no lock,
    else why it names no owner."""
    try:
      if self.path.is_dir():
        return None, "is a directory"
      text = self.path.read_text()
    except FileNotFoundError:
      return None, "gone"
    except (OSError, UnicodeDecodeError) as e:
      return None, f"cannot be read ({type(e).__name__})"
    if not text.strip():
      return None, "is empty"
    try:
      owner = json.loads(text)
    except json.JSONDecodeError:
      return None, "is not JSON"
    if not isinstance(owner, dict):
      return None, f"holds {text.strip()[:20]!r}, not a lock record"
    if not isinstance(owner.get("host"), str) or not isinstance(owner.get("pid"), int) or \
       isinstance(owner.get("pid"), bool) or owner["pid"] <= 0:
      return None, "is not a lock record (no host / pid)"
    return owner, ""

  def _age_s(self) -> float | None:
    try:
      return max(0.0, time.time() - os.stat(os.fspath(self.path)).st_mtime) \
          if is_local(self.path) else None
    except OSError:
      return None

  def _take_over(self, check) -> bool:
    """Moves the lock aside and removes it if ``check(moved path)`` still holds for what was
    moved (another run may have replaced it meanwhile: then it is put back)."""
    stale = self.path.parent / f"{LOCK_FILE}.stale-{self.owner['token'][:8]}"
    try:
      self.path.rename(stale)
    except (FileNotFoundError, FileExistsError):
      return False
    if not check(stale):
      with contextlib.suppress(OSError):
        if is_local(self.path):
          os.link(os.fspath(stale), os.fspath(self.path))  # never over a newer lock
        elif not self.path.exists():
          stale.rename(self.path)
      with contextlib.suppress(OSError):
        stale.unlink()
      return False
    stale.unlink(missing_ok=True)
    return True

  def _unreadable(self, problem: str, last: bool) -> None:
    """A lock naming no owner: taken over once it is older than ``STALE_LOCK_SECONDS`` (a
    lock is written whole, so only a crashed or foreign writer leaves such a file), else one
    line saying what it is and how to clear it. A directory is never removed."""
    age = self._age_s()
    old = f"{_age(age)} old" if age is not None else "age unknown"
    where = f"{self.path} {problem} (owner unknown, {old})"
    if problem != "is a directory" and age is not None and age >= STALE_LOCK_SECONDS:
      inode = os.stat(os.fspath(self.path)).st_ino
      if self._take_over(lambda moved: os.stat(os.fspath(moved)).st_ino == inode):
        print(f"cfsnn_jax: took over the lock {where}: no run can own it",
              file=sys.stderr, flush=True)
      return
    if not last and problem != "is a directory":
      time.sleep(0.2)  # perhaps an older version's run writing its lock: look again
      return
    remove = "rmdir" if problem == "is a directory" else "rm"
    wait = "" if problem == "is a directory" else \
        f"if no run is starting there it is taken over once {STALE_LOCK_SECONDS:.0f} s old, or "
    raise UserError(f"--workdir {self.path.parent} is locked: {where}; {wait}remove it "
                    f"({remove} {self.path}) if no run uses this workdir")

  def acquire(self) -> "WorkdirLock":
    try:
      attempts = 5
      for attempt in range(attempts):
        if self._create():
          self.held = True
          return self
        owner, problem = self._read_owner()
        if owner is None:
          if problem != "gone":  # else just released: try again
            self._unreadable(problem, last=attempt == attempts - 1)
          continue
        if owner["host"] == self.owner["host"] and not _alive(owner["pid"],
                                                              owner.get("start_time")):
          def same(moved, token=owner.get("token")):
            try:
              return json.loads(moved.read_text()).get("token") == token
            except (OSError, ValueError, AttributeError):
              return False
          if self._take_over(same):
            print(f"cfsnn_jax: took over the stale lock of dead process {owner['pid']} "
                  f"in {self.path.parent}", file=sys.stderr, flush=True)
          continue
        raise UserError(f"--workdir {self.path.parent} is in use by pid {owner['pid']} on "
                        f"host {owner['host']} (lock file {self.path}); wait for that run, "
                        "or delete the lock file if it is dead")
    except OSError as e:
      raise fs_error(self.path.parent, e) from None
    raise UserError(f"could not take the lock {self.path}; another run is starting there")

  def release(self) -> None:
    if self.held:
      self.held = False
      if (self._read_owner()[0] or {}).get("token") == self.owner["token"]:
        self.path.unlink(missing_ok=True)

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _write_fd(fd: int, text: str) -> None:
  try:
    data = text.encode()
    while data:
      data = data[os.write(fd, data):]
    os.fsync(fd)
  finally:
    os.close(fd)


def _write_synced(path: str, text: str, flags: int) -> None:
  fd = os.open(path, flags, 0o644)
  try:
    _write_fd(fd, text)
  except OSError:
    with contextlib.suppress(OSError):
      os.unlink(path)
    raise


def write_summary(workdir: epath.Path, summary: dict) -> None:
  """``summary.json``, written last by a run: its presence marks the workdir finished."""
  write_text_atomic(workdir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def summary_line(summary: dict, workdir: Any) -> str:
  """The ``final: ...`` line of a run's summary (printed at the end and for a finished run)."""
  energy = (f"energy={summary['energy_mj_per_image']:.3g}mJ/image "
            if "energy_mj_per_image" in summary else "")
  return (f"final: test_accuracy={summary['test_accuracy']:.4f} "
          f"best_test_accuracy={summary['best_test_accuracy']:.4f} "
          f"firing_rate={summary['test_firing_rate']:.4f} {energy}"
          f"train_time={summary['train_time_s']:.1f}s "
          f"images/s={summary['images_per_s']:.0f} workdir={workdir}")
