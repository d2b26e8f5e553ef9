"""The pass before training that opens every lazily-read file's header (``data.verify``).

Contract: ``verify_files(files, desc)`` runs ``check(path)`` for every ``(path, check)`` of a
``DatasetSplits.files`` list on a few threads (the work is file opens and small reads), with
a tqdm bar on a terminal only, and returns ``(number of files, seconds)``. The first damaged
file (in list order) raises its one-line ``DataError``. A check opens the file, reads its
header and compares the size the header implies with the size on disk; it never decodes the
payload, so a file damaged inside (a JPEG whose entropy data is corrupt) still fails later,
when decoded, with a ``DataError`` naming it.

Checks of the generic formats live here: ``check_npy`` (numpy header, then size = header +
shape x itemsize), ``check_npz`` (zip central directory, the required members, and each
member's numpy header against its stored size). Format checks live with their readers
(``aedat.check_aedat2``, ``aedat.check_aedat31``, ``tiny_imagenet.check_image``...).
"""

from __future__ import annotations

import os
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Sequence

import numpy as np

from cfsnn_jax.data.sources import NPY_LOCK, DataError, FileCheck, decoding, require_path

NUM_THREADS = 8  # header reads wait on the disk, not the CPU


def _npy_header(f: IO[bytes], stored_size: int, path: str, what: str) -> tuple:
  """``(shape, dtype)`` of the numpy header at ``f``; raises when the size disagrees."""
  with decoding(path, what):
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    with NPY_LOCK:
      shape, _, dtype = read(f, max_header_size=1 << 20)  # 2.0 reader also parses 3.0
    offset = f.tell()
  if dtype.hasobject:
    raise DataError(path, f"{what} holds Python objects (pickle); expected a numeric array")
  expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if stored_size != expected:
    raise DataError(path, f"{what} is {stored_size} bytes, its header ({dtype}, shape "
                    f"{tuple(shape)}) says {expected}: truncated or corrupt")
  return tuple(shape), dtype


def check_npy(path: str) -> None:
  """A ``.npy`` file whose header matches its size."""
  require_path(path, "a .npy array")
  with open(path, "rb") as f:
    _npy_header(f, os.path.getsize(path), path, "the .npy array")


def npz_members(path: str, required: Sequence[str] = ()) -> dict[str, tuple]:
  """``{name: (shape, dtype)}`` of an ``.npz`` (central directory and member headers only)."""
  require_path(path, "an .npz archive")
  out = {}
  with decoding(path, "an .npz archive (a zip of .npy arrays)"):
    z = zipfile.ZipFile(path)
  with z:
    for info in z.infolist():
      if not info.filename.endswith(".npy"):
        continue
      name = info.filename[:-4]
      with decoding(path, f"member {info.filename} of an .npz archive"):
        member = z.open(info)
      with member:
        out[name] = _npy_header(member, info.file_size, path, f"member {info.filename}")
  missing = [k for k in required if k not in out]
  if missing:
    raise DataError(path, f"missing arrays {missing}; expected {list(required)}, found "
                    f"{sorted(out)}")
  return out


def check_npz(path: str) -> None:
  npz_members(path)


def _run(item: tuple[str, FileCheck]) -> None:
  path, check = item
  check(path)


def verify_files(files: Sequence[tuple[str, FileCheck]], desc: str = "verify"
                 ) -> tuple[int, float]:
  """Checks every file (see module doc); returns ``(count, seconds)``."""
  start = time.perf_counter()
  if not files:
    return 0, 0.0
  from tqdm.auto import tqdm
  with tqdm(total=len(files), desc=desc, unit="file", leave=False,
            disable=not sys.stderr.isatty()) as bar:
    with ThreadPoolExecutor(min(NUM_THREADS, len(files))) as pool:
      for _ in pool.map(_run, files):
        bar.update()
  return len(files), time.perf_counter() - start
