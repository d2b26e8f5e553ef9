"""Training loop: data, evaluation, checkpoints and metrics around the jitted steps.

Contract: ``train_and_evaluate(run, workdir) -> Trained``, ``run`` a resolved run
(``cfsnn_jax.config.resolve``: validated once, at the entry; nothing here validates it
again). The state and the jitted train / eval steps come from ``steps`` (data parallel over
every device with one mesh axis ``data``: the batch is sharded, parameters / BN statistics
are replicated, batch statistics are global). The state (parameters, non-parameter model
state such as BN statistics and DS-ATGO thresholds, optimizer state, step) and the
data-iterator state are saved together by orbax every ``checkpoint_every_steps`` (and
``checkpoint_every_seconds``, on SIGTERM / SIGINT, and at the end), each with the run's
history (best accuracy, time, images), so a resumed run's records and summary equal an
uninterrupted run's. What the workdir holds decides fresh / resume / finished / refused
(``workdir.inspect``, before anything is written); ``guard`` stops the run on a signal or a
non-finite value (never saved). Only process 0 writes files, all through ``workdir``'s path
layer (etils.epath). A step's metrics are pulled to the host one step late (``LateMetrics``)
so that dispatch stays asynchronous.

``Trained`` keeps the records apart from the live objects: ``summary`` is plain data (what
``summary.json`` holds); ``state``, ``eval_graphdef`` and ``eval_batches`` are what an
end-of-run report needs. The report itself is the caller's ``end_of_run`` (``run.run``); this
module never imports ``analysis``.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from cfsnn_jax import data
from cfsnn_jax.data import pipeline
from cfsnn_jax.neuron import layers
from cfsnn_jax.training import checkpointing, guard, optim, progress, steps
from cfsnn_jax.training import workdir as workdir_lib
from cfsnn_jax.training.metric_writers import METRICS_FILE, MetricWriter

State = steps.State


@dataclasses.dataclass
class Trained:
  """What a run produced: its records (plain data) beside the live objects of its end."""
  summary: dict  # JSON-able: accuracies, times, steps, parameters (+ the report's numbers)
  state: State | None = None  # None when the workdir already held a finished run
  eval_graphdef: Any = None
  eval_batches: pipeline.EvalBatches | None = None
  already_finished: bool = False

  def eval_model(self) -> nnx.Module:
    """The trained model in evaluation mode."""
    return nnx.merge(self.eval_graphdef, self.state["params"], self.state["rest"])


def run_length(config: Any, num_train: int) -> tuple[int, int]:
  """``(steps per epoch, total steps)`` of a run over ``num_train`` training examples."""
  steps_per_epoch = max(1, num_train // config.batch_size)
  total = config.num_train_steps if config.num_train_steps > 0 else (
      config.num_epochs * steps_per_epoch)
  return steps_per_epoch, total


def evaluate(state: State, eval_fn, batches: pipeline.EvalBatches, to_global) -> dict:
  sums = {"correct": 0.0, "count": 0.0, "loss_sum": 0.0}
  rates = []
  for batch in batches:
    out = eval_fn(state, to_global(batch))
    for k in sums:
      sums[k] += float(out[k])
    rates.append(np.asarray(out["rate_LT"]))
  count = max(sums["count"], 1.0)
  return {"accuracy": sums["correct"] / count, "loss": sums["loss_sum"] / count,
          "firing_rate": float(np.mean(rates))}


def train_and_evaluate(run: Any, workdir: str, *,
                       end_of_run: Callable[[Trained, str], dict] | None = None,
                       on_eval: Callable | None = None) -> Trained:
  """Runs (or resumes) ``run`` in ``workdir``; README "Runs and workdirs".

  ``end_of_run(trained, local_dir) -> extra summary fields`` (process 0, e.g. ``run.run``'s
  report) runs under the workdir lock before ``summary.json``, the finished marker, is written.
  ``on_eval(step, eval_model, eval_batches, writer)`` runs on process 0 after every evaluation
  (``run.run`` passes the per-layer TensorBoard statistics of ``analysis.report``).
  """
  is_writer = jax.process_index() == 0
  root = workdir_lib.workdir_path(workdir)
  description = workdir_lib.run_description(run)
  status = workdir_lib.inspect(root, description)  # reads only; refuses another run's workdir
  if status.kind == "finished":
    if is_writer:
      print(f"cfsnn_jax: {root} holds a finished run; nothing to do (its summary.json):",
            flush=True)
      print(workdir_lib.summary_line(status.summary, root), flush=True)
    return Trained(dict(status.summary), already_finished=True)
  if is_writer:
    try:
      root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise workdir_lib.fs_error(root, e) from None
  lock = workdir_lib.WorkdirLock(root).acquire() if is_writer else None
  try:
    if is_writer:
      workdir_lib.write_description(root, description, status)
    with guard.StopSignals() as signals:
      trained, writer = _train(run, root, description, signals, on_eval)
      _finish(run.config, root, trained, writer, end_of_run)
      return trained
  finally:
    if lock is not None:
      lock.release()


class LateMetrics:
  """A step's metrics, held until the next step is dispatched and only then pulled to the
  host (checked for divergence, written, shown), so that dispatch stays asynchronous.

  ``hold(step, metrics, ...)`` writes the held step and holds this one; ``write_held(...)``
  writes the held step now (before an evaluation or a checkpoint that covers it)."""

  def __init__(self, writer: MetricWriter, bar, every: int):
    self.writer, self.bar, self.every = writer, bar, max(every, 1)
    self.held: tuple[int, dict, Any] | None = None  # (step, metrics, finite flag)

  def hold(self, step: int, metrics: dict, state: State, last_saved: int) -> None:
    finite = metrics.pop("finite")  # computed inside the step: no extra dispatch
    self.write_held(state, last_saved)
    self.held = (step, metrics, finite)

  def write_held(self, state: State, last_saved: int, force: bool = False) -> None:
    if self.held is None:
      return
    step, metrics, finite = self.held
    self.held = None
    guard.raise_if_diverged(step, metrics, finite, state, last_saved)
    self.bar.update(step - self.bar.n)
    if force or step % self.every == 0:
      host = {k: float(v) for k, v in jax.device_get(metrics).items()}
      self.writer.write(step, "train", host)
      self.writer.write_learning_rate(step)
      self.bar.set_postfix(loss=f"{host['loss']:.3f}", acc=f"{host['accuracy']:.3f}")


class TrainClock:
  """Training time without evaluations (into ``history["train_time_s"]``) and the time since
  the last checkpoint (for ``checkpoint_every_seconds``)."""

  def __init__(self, history: dict):
    self.history = history
    self.started = self.saved = time.perf_counter()

  def pause(self) -> None:
    self.history["train_time_s"] += time.perf_counter() - self.started

  def resume(self) -> None:
    self.started = time.perf_counter()

  def checkpointed(self) -> None:
    self.pause()
    self.resume()
    self.saved = self.started

  def since_saved(self) -> float:
    return time.perf_counter() - self.saved


def _train(run: Any, root: Any, description: dict, signals: guard.StopSignals,
           on_eval: Callable | None) -> tuple[Trained, MetricWriter]:
  config = run.config
  is_writer = jax.process_index() == 0
  splits = data.load_dataset(config)
  info = splits.info
  steps_per_epoch, total_steps = run_length(config, len(splits.train))
  eval_every = config.eval_every_steps or steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or steps_per_epoch
  ckpt_seconds = float(config.get("checkpoint_every_seconds", 0) or 0)

  setup = steps.create_train_state(run, info, total_steps)
  built = steps.make_steps(run, setup)
  state = built.place(setup.state)
  train_iter = pipeline.train_iterator(
      splits.train, config.batch_size, config.seed, augment=data.train_augment(config, info),
      process_index=jax.process_index(), process_count=jax.process_count(),
      worker_count=config.data_workers)
  eval_batches = pipeline.EvalBatches(
      splits.test, config.batch_size, transform=data.eval_transform(config, info),
      process_index=jax.process_index(), process_count=jax.process_count())

  manager = checkpointing.make_manager(root, config.keep_checkpoints)
  state, start_step, saved = checkpointing.restore_newest_intact(manager, state, train_iter)
  if start_step == 0 and config.init_from:
    state = checkpointing.init_from(config.init_from, state)
  # Everything the records need to continue exactly: restored with the checkpoint.
  history = dict({"best_accuracy": 0.0, "last_eval": None, "train_time_s": 0.0, "images": 0},
                 **saved.get("history", {}))

  writer = MetricWriter(root, enabled=is_writer, start_step=start_step)
  writer.track_learning_rate(optim.learning_rate_schedule(config.optimizer, total_steps))
  if is_writer:
    print(f"cfsnn_jax: {config.model.name} on {info.name} ({len(splits.train)} train / "
          f"{len(splits.test)} test), {setup.num_params:,} parameters, T={config.num_steps}, "
          f"neuron={config.neuron.name}, {jax.device_count()} device(s) "
          f"[{jax.devices()[0].platform}], {total_steps} steps"
          + (f", resuming at step {start_step}" if start_step else ""), flush=True)

  bar = progress.make_progress(total_steps, start_step, is_writer and config.progress_bar,
                              config.log_every_steps)
  late = LateMetrics(writer, bar, config.log_every_steps)
  clock = TrainClock(history)
  last_saved = start_step
  try:
    for step in range(start_step, total_steps):
      state, metrics = built.train(state, built.to_global(next(train_iter)))
      history["images"] += config.batch_size
      done = step + 1
      late.hold(done, metrics, state, last_saved)
      if done % eval_every == 0 or done == total_steps:
        late.write_held(state, last_saved, force=True)
        clock.pause()
        ev = evaluate(state, built.eval, eval_batches, built.to_global)
        _record_eval(done, total_steps, ev, history, writer, bar, on_eval,
                     lambda: nnx.merge(setup.eval_graphdef, state["params"], state["rest"]),
                     eval_batches)
        clock.resume()
      stop, due_time = _stop_or_due(signals, clock, ckpt_seconds, done, config)
      if done % ckpt_every == 0 or done == total_steps or stop or due_time:
        late.write_held(state, last_saved)  # its row belongs before the checkpoint
        guard.refuse_nonfinite_state(done, state, last_saved)
        clock.checkpointed()
        checkpointing.save(manager, done, state, train_iter,
                           {"history": history, "run": description})
        writer.flush()
        last_saved = done
      if stop:
        raise guard.Interrupted(signals.received or signal.SIGTERM, done, root)
  finally:
    bar.close()
    checkpointing.finish(manager)
    writer.flush()

  train_time = history["train_time_s"]
  ev = history["last_eval"] or evaluate(state, built.eval, eval_batches, built.to_global)
  summary = {"test_accuracy": ev["accuracy"],
             "best_test_accuracy": max(history["best_accuracy"], ev["accuracy"]),
             "test_firing_rate": ev["firing_rate"], "train_time_s": train_time,
             "images_per_s": history["images"] / max(train_time, 1e-9), "steps": total_steps,
             "num_params": setup.num_params}
  return Trained(summary, state, setup.eval_graphdef, eval_batches), writer


def _record_eval(done: int, total_steps: int, ev: dict, history: dict, writer: MetricWriter,
                 bar, on_eval: Callable | None, eval_model: Callable[[], nnx.Module],
                 eval_batches: pipeline.EvalBatches) -> None:
  """One evaluation's records: history, the ``test`` row, the neurons' learned scalars,
  ``on_eval``, the progress postfix and the stdout line."""
  history["best_accuracy"] = max(history["best_accuracy"], ev["accuracy"])
  history["last_eval"] = ev
  writer.write(done, "test", ev)
  if writer.enabled:  # learned surrogate alphas / DS-ATGO thresholds per layer and step
    scalars = layers.neuron_scalars(eval_model())
    if scalars:
      writer.write(done, "neurons", scalars)
  if writer.enabled and on_eval is not None:  # e.g. per-layer rates, potential histograms
    on_eval(done, eval_model(), eval_batches, writer)
  bar.set_postfix(test_acc=f"{ev['accuracy']:.4f}")
  if writer.enabled:
    print(progress.eval_line(done, total_steps, ev), flush=True)


def _stop_or_due(signals: guard.StopSignals, clock: TrainClock, ckpt_seconds: float,
                 done: int, config: Any) -> tuple[bool, bool]:
  """(a signal asks to stop, a time-based checkpoint is due), agreed by every process."""
  due_time = ckpt_seconds > 0 and clock.since_saved() >= ckpt_seconds
  stop = signals.received is not None
  if jax.process_count() > 1:  # decide together, at steps every process agrees on
    if ckpt_seconds > 0 or done % max(config.log_every_steps, 1) == 0:
      return guard.agree(stop), guard.agree(due_time)
    return False, False
  return stop, due_time


def _finish(config: Any, root: Any, trained: Trained, writer: MetricWriter,
            end_of_run: Callable[[Trained, str], dict] | None) -> None:
  """The end of a run: the caller's report (process 0, into the workdir, staged if remote),
  the ``summary`` row and hparams, then ``summary.json``, written last: the finished marker."""
  is_writer = jax.process_index() == 0
  if is_writer and end_of_run is not None:
    with workdir_lib.staged_dir(root, inputs=(METRICS_FILE,)) as local:
      trained.summary.update(end_of_run(trained, local))
  writer.write(trained.summary["steps"], "summary", trained.summary)
  writer.write_hparams(config, trained.summary)  # the config as TensorBoard hparams
  writer.close()
  if is_writer:
    workdir_lib.write_summary(root, trained.summary)
    print(workdir_lib.summary_line(trained.summary, root), flush=True)
