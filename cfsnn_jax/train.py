"""Training loop: data, evaluation, checkpoints and metrics around the jitted steps.

Contract: ``train_and_evaluate(config, workdir) -> summary dict``. The config is validated
first (one-line ``UserError``s before any compilation). The state and the jitted train / eval
steps come from ``steps`` (data parallel over every device with one mesh axis ``data``: the
batch is sharded, parameters / BN statistics are replicated, batch statistics are global).
The state (parameters, non-parameter model state such as BN statistics and DS-ATGO
thresholds, optimizer state, step) and the data-iterator state are saved together by orbax
every ``checkpoint_every_steps`` and at the end; a run resumes from the latest checkpoint in
``workdir``. Only process 0 writes files. The summary also carries what the end-of-run
report needs (``state``, ``eval_graphdef``, ``eval_batches``); the report itself is
``run.run``'s (this module never imports ``analysis``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from cfsnn_jax import checkpointing, config_schema, data, layers, optim, steps
from cfsnn_jax.data import pipeline
from cfsnn_jax.errors import UserError
from cfsnn_jax.metric_writers import MetricWriter

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


def train_and_evaluate(config: Any, workdir: str, on_eval: Callable | None = None) -> dict:
  """``on_eval(step, eval_model, eval_batches, writer)``: called on process 0 after every
  evaluation (``run.run`` passes the per-layer TensorBoard statistics of ``analysis``)."""
  config_schema.validate_config(config)
  is_writer = jax.process_index() == 0
  if is_writer:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
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

  manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
  state, start_step = checkpointing.restore_latest(manager, state, train_iter)
  if start_step == 0 and config.init_from:
    state = checkpointing.init_from(config.init_from, state)

  writer = MetricWriter(workdir, enabled=is_writer)
  writer.track_learning_rate(optim.learning_rate_schedule(config.optimizer, total_steps))
  if is_writer:
    print(f"cfsnn_jax: {config.model.name} on {info.name} ({len(splits.train)} train / "
          f"{len(splits.test)} test), {num_params:,} parameters, T={config.num_steps}, "
          f"neuron={config.neuron.name}, {num_devices} device(s) "
          f"[{jax.devices()[0].platform}], {total_steps} steps"
          + (f", resuming at step {start_step}" if start_step else ""), flush=True)

  from tqdm.auto import tqdm
  bar = tqdm(total=total_steps, initial=start_step, disable=not (is_writer and
                                                                  config.progress_bar),
             dynamic_ncols=True, desc="train")
  history = {"best_accuracy": 0.0, "last_eval": None}
  pending = None  # metrics of the previous step, pulled one step late
  train_time = 0.0
  images = 0
  t_start = time.perf_counter()
  for step in range(start_step, total_steps):
    batch = to_global(next(train_iter))
    state, metrics = p_train(state, batch)
    images += config.batch_size
    if pending is not None:
      _log_train(writer, bar, *pending, config.log_every_steps)
    pending = (step + 1, metrics)
    done = step + 1
    if done % eval_every == 0 or done == total_steps:
      _log_train(writer, bar, *pending, config.log_every_steps, force=True)
      pending = None
      train_time += time.perf_counter() - t_start
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
        on_eval(done, nnx.merge(eval_graphdef, state["params"], state["rest"]), eval_batches,
                writer)
      bar.set_postfix(test_acc=f"{ev['accuracy']:.4f}")
      t_start = time.perf_counter()
    if done % ckpt_every == 0 or done == total_steps:
      checkpointing.save(manager, done, state, train_iter)
  bar.close()
  train_time += time.perf_counter() - t_start
  manager.wait_until_finished()
  manager.close()
  ev = history["last_eval"] or evaluate(state, p_eval, eval_batches, to_global)
  summary = {"test_accuracy": ev["accuracy"],
             "best_test_accuracy": max(history["best_accuracy"], ev["accuracy"]),
             "test_firing_rate": ev["firing_rate"], "train_time_s": train_time,
             "images_per_s": images / max(train_time, 1e-9), "steps": total_steps,
             "num_params": num_params}
  writer.write(total_steps, "summary", summary)
  writer.close()
  if is_writer:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    print(f"final: test_accuracy={summary['test_accuracy']:.4f} "
          f"best_test_accuracy={summary['best_test_accuracy']:.4f} "
          f"firing_rate={summary['test_firing_rate']:.4f} "
          f"train_time={summary['train_time_s']:.1f}s "
          f"images/s={summary['images_per_s']:.0f} workdir={workdir}", flush=True)
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
