"""Random-access data sources and the dataset description every loader returns.

Contract: a loader returns ``DatasetSplits(train, test, info)`` where ``train`` / ``test`` are
random-access sources (``len`` + ``__getitem__`` -> ``{"image": np.ndarray, "label": int}``)
that grain's ``MapDataset.source`` accepts, and ``info`` says the number of classes, the
per-example input shape and whether the input is static (``[...]``, repeated over T by the
model) or time-major events (``[T, ...]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from cfsnn_jax.errors import UserError

# Held around every numpy header parse of the data code (``np.load`` and the header pass's
# ``read_array_header_*``): numpy parses .npy headers with ast.literal_eval, which is not
# thread-safe on CPython < 3.11.9 / 3.12.3 ("SystemError: AST constructor recursion depth
# mismatch", cpython#106905), and grain and the header pass read in threads.
NPY_LOCK = threading.Lock()


class RandomAccessSource(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  input_shape: tuple[int, ...]  # one example, without batch (and, for events, without T)
  static_input: bool = True  # False: examples are time-major event frames [T, ...]
  synthetic: bool = False  # True for generated data (never reported as a benchmark result)
  vocab_size: int = 0  # text datasets: number of token ids (0 for images / events)
  frame_spec: Any = None  # recorded event datasets: the events.FrameSpec of their frames


FileCheck = Callable[[str], None]  # opens one file's header; raises DataError when damaged


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
  train: RandomAccessSource
  test: RandomAccessSource
  info: DatasetInfo
  # (path, check) of every file read lazily, for the pass before training (verify.py)
  files: Sequence[tuple[str, FileCheck]] = ()


class DataError(UserError):
  """A dataset on disk is missing, truncated or malformed (always one line: the file, then
  what was expected). Picklable, so it crosses grain's worker processes unchanged."""

  def __init__(self, path: str, problem: str):
    problem = " ".join(str(problem).split())  # one line whatever the wrapped error said
    super().__init__(f"{path}: {problem}")
    self.path = str(path)
    self.problem = problem

  def __reduce__(self):
    return (type(self), (self.path, self.problem))


def read_text(path: str, expected: str) -> str:
  """The UTF-8 text of ``path`` (a BOM is dropped); one ``DataError`` line when the file is
  missing or not UTF-8, naming the file, the byte and its line."""
  require_path(path, expected)
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(path, f"not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
                    f"expected {expected}") from None


@contextlib.contextmanager
def decoding(path: str, expected: str):
  """Turns a decoder's own exception on damaged bytes (zip, pickle, image, npy) into one
  ``DataError`` line naming ``path`` and what was expected. Wrap the decoder call only."""
  try:
    yield
  except DataError:
    raise
  except Exception as e:  # decoders raise many types on damaged input (BadZipFile, EOFError...)
    raise DataError(path, f"unreadable ({type(e).__name__}: {e}); expected {expected}"
                    ) from None


def require_path(path: str, expected: str, *, is_dir: bool = False) -> str:
  """Returns ``path`` or raises ``DataError`` saying what should have been there."""
  ok = os.path.isdir(path) if is_dir else os.path.isfile(path)
  if not ok:
    kind = "directory" if is_dir else "file"
    raise DataError(path, f"missing {kind}; expected {expected}")
  return path


class ArraySource:
  """In-memory source over aligned numpy arrays (one example per leading index)."""

  def __init__(self, **arrays: np.ndarray):
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"ArraySource arrays differ in length: "
                       f"{ {k: len(v) for k, v in arrays.items()} }")
    self._arrays = arrays
    self._len = lengths.pop()

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {k: v[index] for k, v in self._arrays.items()}

  @property
  def arrays(self) -> dict[str, np.ndarray]:
    return self._arrays


class IndexedSource:
  """Lazy source: ``source[i] = read(i)`` for ``i < length`` (files decoded on access).

  ``read`` must be picklable (a module-level function or a ``functools.partial`` of one)
  when the pipeline prefetches with worker processes.
  """

  def __init__(self, length: int, read: Callable[[int], dict[str, Any]]):
    self._len = int(length)
    self._read = read

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range for a source of length {self._len}")
    return self._read(index)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Per-class split: in each class, a seeded permutation; the first round(n * test_fraction)
  indices go to test. Returns sorted (train_idx, test_idx)."""
  rng = np.random.default_rng(seed)
  train: list[np.ndarray] = []
  test: list[np.ndarray] = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    n_test = int(round(len(idx) * test_fraction))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def tfds_data_sources(name: str, data_dir: str, splits: Sequence[str]) -> list[Any]:
  """``tfds.data_source`` of each split (no download; one-line error when absent).

  Reading the prepared ``array_record`` files needs no TensorFlow; ``data_dir`` may be local
  or on cloud storage (``''``: tfds's default, ``$TFDS_DATA_DIR``).
  """
  import tensorflow_datasets as tfds
  try:
    return [tfds.data_source(name, split=s, data_dir=data_dir or None, download=False)
            for s in splits]
  except Exception as e:  # tfds raises several types for a missing / unprepared dataset
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    raise DataError(where, f"no prepared tfds dataset {name!r} ({first}); expected "
                    f"{name}/<version>/ in array_record format (see docs/DATA.md)") from None


def check_input_shape(shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(int(s) for s in shape)
  if not shape or min(shape) < 1:
    raise ValueError(f"impossible input shape {shape}")
  return shape
