"""The one grain input pipeline every dataset feeds.

Contract:
- ``train_iterator(source, global_batch_size, seed, ...)`` -> a checkpointable
  ``grain.DatasetIterator`` of per-process numpy batches ``{"image": [b, ...], "label": [b]}``
  with ``b = global_batch_size // process_count``. Seeded shuffle, reshuffled every epoch,
  infinite (steps, not epochs, drive training), per-example ``augment(example, rng)`` with a
  per-index seeded ``np.random.Generator`` (deterministic whatever the prefetch), process
  ``p`` takes global positions ``p, p + P, ...`` so the processes' batches concatenate to the
  global batch and never overlap. Prefetch: ``num_threads`` reader threads fill a buffer of
  ``prefetch_buffer`` batches; ``worker_count > 0`` moves the whole per-batch work (read,
  augment, stack) into that many worker processes (``mp_prefetch``; for GIL-bound
  augmentation such as AutoAugment; source and augment must then be picklable). Batches are
  the same for any ``num_threads`` / ``worker_count``; the iterator state's format depends on
  ``worker_count``, so a checkpoint resumes with the same ``worker_count``. Workers' batches
  are copied out of shared memory on arrival (no block outlives its batch).
- ``eval_batches(source, global_batch_size, ...)`` -> a list-like of per-process batches in
  order, padded to a fixed size with ``"mask"`` (0 on padding) so eval never recompiles.
"""

from __future__ import annotations

from cfsnn_jax.errors import UserError

from typing import Any, Callable, Iterator

import grain
import numpy as np

from cfsnn_jax.data.sources import RandomAccessSource

Augment = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


def check_batch_size(global_batch_size: int, process_count: int, num_devices: int) -> int:
  if global_batch_size < 1:
    raise UserError(f"batch_size must be >= 1, got {global_batch_size}")
  if global_batch_size % num_devices:
    raise UserError(f"batch_size {global_batch_size} is not divisible by the device count "
                     f"{num_devices}")
  if global_batch_size % process_count:
    raise UserError(f"batch_size {global_batch_size} is not divisible by the process count "
                     f"{process_count}")
  return global_batch_size // process_count


def _stack(examples):
  """Stacks a list of examples into one batch (one preallocated array per key)."""
  batch = {}
  for k in examples[0]:
    first = np.asarray(examples[0][k])
    out = np.empty((len(examples),) + first.shape, first.dtype)
    for i, e in enumerate(examples):
      out[i] = e[k]
    batch[k] = out
  return batch


def _ignore_sigint(worker_index: int, worker_count: int) -> None:
  """In each data worker: Ctrl-C reaches the whole process group, but only the main process
  acts on it (it saves and stops the workers); a worker's KeyboardInterrupt is a traceback."""
  del worker_index, worker_count
  import signal
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_iterator(source: RandomAccessSource, global_batch_size: int, seed: int, *,
                   augment: Augment | None = None, process_index: int = 0,
                   process_count: int = 1, prefetch_buffer: int = 2,
                   num_threads: int = 2, worker_count: int = 0) -> grain.DatasetIterator:
  local_bs = check_batch_size(global_batch_size, process_count, 1)
  if len(source) < global_batch_size:
    raise UserError(f"the training split has {len(source)} examples, fewer than one batch "
                     f"of {global_batch_size}")
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  if process_count > 1:
    ds = ds[process_index::process_count]
  if augment is not None:
    ds = ds.random_map(augment)
  ds = ds.batch(local_bs, drop_remainder=True, batch_fn=_stack)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=prefetch_buffer))
  if worker_count > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; defaults outside an app
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=prefetch_buffer),
        worker_init_fn=_ignore_sigint).map(_own_memory)
  return iter(it_ds)


def _own_memory(batch: dict) -> dict:
  """A worker's batch copied out of its shared-memory block, which is unlinked as soon as the
  block is dropped: a block still referenced at interpreter exit (the last batch, say) is never
  unlinked (its ``__del__`` fails during shutdown) and multiprocessing's resource tracker
  warns of "leaked shared_memory objects". The map runs in this process and is stateless, so
  the iterator's checkpointed state is unchanged."""
  return {k: np.array(v) for k, v in batch.items()}


class EvalBatches:
  """Ordered, padded per-process evaluation batches (re-iterable)."""

  def __init__(self, source: RandomAccessSource, global_batch_size: int,
               transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               process_index: int = 0, process_count: int = 1):
    self.local_bs = check_batch_size(global_batch_size, process_count, 1)
    self.source = source
    self.transform = transform
    self.process_index = process_index
    self.process_count = process_count
    self.num_batches = -(-len(source) // global_batch_size)
    self.global_batch_size = global_batch_size

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    n = len(self.source)
    template = None
    for b in range(self.num_batches):
      start = b * self.global_batch_size + self.process_index * self.local_bs
      examples, mask = [], []
      for i in range(start, start + self.local_bs):
        if i < n and i < (b + 1) * self.global_batch_size:
          ex = self.source[i]
          if self.transform is not None:
            ex = self.transform(ex)
          template = template or ex
          examples.append(ex)
          mask.append(1.0)
        else:
          examples.append(None)
          mask.append(0.0)
      if template is None:
        template = self.transform(self.source[0]) if self.transform else self.source[0]
      examples = [e if e is not None else {k: np.zeros_like(v) for k, v in template.items()}
                  for e in examples]
      batch = _stack(examples)
      batch["mask"] = np.asarray(mask, np.float32)
      yield batch
