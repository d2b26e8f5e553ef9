"""The one path layer for everything a run reads or writes in its workdir (``etils.epath``).

Contract: ``workdir_path(s)`` turns the ``--workdir`` string into an ``epath.Path`` (local
paths are made absolute; ``gs://``, ``s3://`` ... stay URIs and go through epath's fsspec
backend, the same layer orbax uses), rejecting an empty string with one line.
``write_text_atomic`` writes a whole file so that a reader sees the old or the new content,
never half (local: temporary file + ``os.replace``; object stores: a single object upload is
already atomic). ``fs_error(path, exc)`` turns an ``OSError`` (not a directory, read-only,
disk full, ...) into a one-line ``UserError`` naming the path (a full disk or quota reads
``no space left on device: <path> (...)`` with the remedy). A failed ``write_text_atomic``
removes its temporary file. ``staged_dir(workdir, inputs)``
gives code that only knows local files (matplotlib, the analysis report) a local directory:
the workdir itself when it is local, otherwise a temporary copy of ``inputs`` whose files are
uploaded into the workdir on exit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

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
