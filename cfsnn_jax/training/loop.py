"""Training loop: data, evaluation, checkpoints and metrics around the jitted steps.

Contract: ``train_and_evaluate(config, workdir) -> summary dict``. The config is validated
first (one-line ``UserError``s before any compilation). The state and the jitted train / eval
steps come from ``steps`` (data parallel over every device with one mesh axis ``data``: the
batch is sharded, parameters / BN statistics are replicated, batch statistics are global).
The state (parameters, non-parameter model state such as BN statistics and DS-ATGO
thresholds, optimizer state, step) and the data-iterator state are saved together by orbax
every ``checkpoint_every_steps`` (and ``checkpoint_every_seconds``, on SIGTERM / SIGINT, and
at the end), each with the run's history (best accuracy, time, images), so a resumed run's
records and summary equal an uninterrupted run's. What the workdir holds decides fresh /
resume / finished / refused (``workdir.inspect``, before anything is written); ``run_guard``
stops the run on a signal or a non-finite value (never saved). Only process 0 writes files,
all through ``workdir``'s path layer (etils.epath). The summary also carries what the
end-of-run report needs (``state``, ``eval_graphdef``, ``eval_batches``); the report itself is ``run.run``'s
``end_of_run`` callback (this module never imports ``analysis``).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from cfsnn_jax import data
from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.data import pipeline
from cfsnn_jax.errors import UserError
from cfsnn_jax.neuron import layers
from cfsnn_jax.training import checkpointing, optim, progress, steps, guard as run_guard
from cfsnn_jax.training import workdir as workdir_lib
from cfsnn_jax.training.metric_writers import METRICS_FILE, MetricWriter

State = steps.State


def _steps(config: Any, num_train: int) -> tuple[int, int]:
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


def train_and_evaluate(config: Any, workdir: str, *,
                       end_of_run: Callable[[dict, str], dict] | None = None,
                       on_eval: Callable | None = None) -> dict:
  """Runs (or resumes) the run of ``config`` in ``workdir``; README "Runs and workdirs".

  ``end_of_run(summary, local_dir) -> extra summary fields`` (process 0, e.g. ``run.run``'s
  report) runs under the workdir lock before ``summary.json``, the finished marker, is written.
  ``on_eval(step, eval_model, eval_batches, writer)`` runs on process 0 after every evaluation
  (``run.run`` passes the per-layer TensorBoard statistics of ``analysis.report``).
  """
  config_schema.validate_config(config)
  is_writer = jax.process_index() == 0
  root = workdir_lib.workdir_path(workdir)
  description = workdir_lib.run_description(config)
  status = workdir_lib.inspect(root, description)  # reads only; refuses another run's workdir
  if status.kind == "finished":
    if is_writer:
      print(f"cfsnn_jax: {root} holds a finished run; nothing to do (its summary.json):",
            flush=True)
      print(workdir_lib.summary_line(status.summary, root), flush=True)
    return dict(status.summary, finished=True)
  if is_writer:
    try:
      root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise workdir_lib.fs_error(root, e) from None
  lock = workdir_lib.WorkdirLock(root).acquire() if is_writer else None
  try:
    if is_writer:
      workdir_lib.write_description(root, description, status)
    with run_guard.StopSignals() as signals:
      return _train(config, root, description, signals, end_of_run, on_eval)
  finally:
    if lock is not None:
      lock.release()


def _train(config: Any, root: Any, description: dict, signals: run_guard.StopSignals,
           end_of_run: Callable[[dict, str], dict] | None,
           on_eval: Callable | None = None) -> dict:
  is_writer = jax.process_index() == 0
  num_devices = jax.device_count()
  try:
    pipeline.check_batch_size(config.batch_size, jax.process_count(), num_devices)
  except ValueError as e:
    raise UserError(str(e)) from None

  splits = data.load_dataset(config)
  info = splits.info
  steps_per_epoch, total_steps = _steps(config, len(splits.train))
  eval_every = config.eval_every_steps or steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or steps_per_epoch
  ckpt_seconds = float(config.get("checkpoint_every_seconds", 0) or 0)

  setup = steps.create_train_state(config, info, total_steps)
  eval_graphdef, num_params = setup.eval_graphdef, setup.num_params
  built = steps.make_steps(config, setup)
  p_train, p_eval, to_global = built.train, built.eval, built.to_global
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
          f"{len(splits.test)} test), {num_params:,} parameters, T={config.num_steps}, "
          f"neuron={config.neuron.name}, {num_devices} device(s) "
          f"[{jax.devices()[0].platform}], {total_steps} steps"
          + (f", resuming at step {start_step}" if start_step else ""), flush=True)

  bar = progress.make_progress(total_steps, start_step, is_writer and config.progress_bar,
                              config.log_every_steps)
  pending = None  # (step, metrics, finite flag) of the previous step, pulled one step late
  last_saved = start_step
  t_start = t_saved = time.perf_counter()

  def check(entry) -> None:
    step, metrics, finite = entry
    if not bool(finite):
      what = run_guard.first_nonfinite(metrics, state)
      raise run_guard.Diverged(
          f"training diverged at step {step}: {what}; nothing non-finite was saved, the latest "
          f"checkpoint (step {last_saved}) is the last good state; lower "
          "optimizer.learning_rate or set optimizer.grad_clip")

  def save(done: int) -> None:
    nonlocal last_saved, t_start, t_saved
    if not bool(run_guard.all_finite(state)):
      check((done, {"loss": 0.0, "grad_norm": 0.0}, False))
    history["train_time_s"] += time.perf_counter() - t_start
    t_start = t_saved = time.perf_counter()
    checkpointing.save(manager, done, state, train_iter,
                       {"history": history, "run": description})
    writer.flush()
    last_saved = done

  try:
    for step in range(start_step, total_steps):
      batch = to_global(next(train_iter))
      state, metrics = p_train(state, batch)
      finite = metrics.pop("finite")  # computed inside the step: no extra dispatch
      history["images"] += config.batch_size
      if pending is not None:
        check(pending)
        _log_train(writer, bar, *pending[:2], config.log_every_steps)
      pending = (step + 1, metrics, finite)
      done = step + 1
      if done % eval_every == 0 or done == total_steps:
        check(pending)
        _log_train(writer, bar, *pending[:2], config.log_every_steps, force=True)
        pending = None
        history["train_time_s"] += time.perf_counter() - t_start
        ev = evaluate(state, p_eval, eval_batches, to_global)
        history["best_accuracy"] = max(history["best_accuracy"], ev["accuracy"])
        history["last_eval"] = ev
        writer.write(done, "test", ev)
        if is_writer:  # learned surrogate alphas / DS-ATGO thresholds per layer and step
          scalars = layers.neuron_scalars(
              nnx.merge(eval_graphdef, state["params"], state["rest"]))
          if scalars:
            writer.write(done, "neurons", scalars)
        if is_writer and on_eval is not None:  # e.g. per-layer rates, potential histograms
          on_eval(done, nnx.merge(eval_graphdef, state["params"], state["rest"]),
                  eval_batches, writer)
        bar.set_postfix(test_acc=f"{ev['accuracy']:.4f}")
        if is_writer:
          print(progress.eval_line(done, total_steps, ev), flush=True)
        t_start = time.perf_counter()
      due_time = ckpt_seconds > 0 and time.perf_counter() - t_saved >= ckpt_seconds
      stop = signals.received is not None
      if jax.process_count() > 1:  # decide together, at steps every process agrees on
        if ckpt_seconds > 0 or done % max(config.log_every_steps, 1) == 0:
          stop, due_time = run_guard.agree(stop), run_guard.agree(due_time)
        else:
          stop = due_time = False
      if done % ckpt_every == 0 or done == total_steps or stop or due_time:
        if pending is not None:  # its row belongs before the checkpoint that covers it
          check(pending)
          _log_train(writer, bar, *pending[:2], config.log_every_steps)
          pending = None
        save(done)
      if stop:
        raise run_guard.Interrupted(signals.received or signal.SIGTERM, done, root)
    if pending is not None:
      check(pending)
  finally:
    bar.close()
    checkpointing.finish(manager)
    writer.flush()

  train_time = history["train_time_s"]
  ev = history["last_eval"] or evaluate(state, p_eval, eval_batches, to_global)
  summary = {"test_accuracy": ev["accuracy"],
             "best_test_accuracy": max(history["best_accuracy"], ev["accuracy"]),
             "test_firing_rate": ev["firing_rate"], "train_time_s": train_time,
             "images_per_s": history["images"] / max(train_time, 1e-9), "steps": total_steps,
             "num_params": num_params}
  if is_writer and end_of_run is not None:  # the report, into the workdir (staged if remote)
    with workdir_lib.staged_dir(root, inputs=(METRICS_FILE,)) as local:
      summary.update(end_of_run(dict(summary, state=state, eval_graphdef=eval_graphdef,
                                     eval_batches=eval_batches), local))
  writer.write(total_steps, "summary", summary)
  writer.write_hparams(config, summary)  # the config as TensorBoard hparams
  writer.close()
  if is_writer:  # written last: its presence marks the workdir finished
    workdir_lib.write_text_atomic(root / workdir_lib.SUMMARY_FILE,
                                json.dumps(summary, indent=2) + "\n")
    print(workdir_lib.summary_line(summary, root), flush=True)
  summary.update(state=state, eval_graphdef=eval_graphdef, eval_batches=eval_batches)
  return summary


def _log_train(writer: MetricWriter, bar, step: int, metrics: dict, every: int,
               force: bool = False) -> None:
  bar.update(step - bar.n)
  if force or step % max(every, 1) == 0:
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    writer.write(step, "train", host)
    writer.write_learning_rate(step)
    bar.set_postfix(loss=f"{host['loss']:.3f}", acc=f"{host['accuracy']:.3f}")
