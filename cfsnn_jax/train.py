"""Training loop: state, jitted step functions, evaluation, checkpoints and metrics.

Contract: ``train_and_evaluate(config, workdir) -> summary dict``. The config is validated
first (one-line errors before any compilation). Data parallel over every device with one
``jax.make_mesh`` axis ``data``: the batch is sharded, parameters / BN statistics are
replicated, and batch statistics are global because the step is one SPMD program. The state
(parameters, non-parameter model state such as BN statistics and DS-ATGO thresholds,
optimizer state, step, RNG) and the data-iterator state are saved together by orbax every
``checkpoint_every_steps`` and at the end; a run resumes from the latest checkpoint in
``workdir``. Only process 0 writes files.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cfsnn_jax import checkpointing, config_schema, data, losses, models, optim
from cfsnn_jax.analysis import curves, report, spiking_stats
from cfsnn_jax.data import pipeline
from cfsnn_jax.layers import NeuronAux, NeuronFactory
from cfsnn_jax.metric_writers import MetricWriter

State = dict[str, Any]


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
  """One ``data`` axis over every device (of every process) or over ``devices``."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def build_model(config: Any, info: data.sources.DatasetInfo, rngs: nnx.Rngs) -> nnx.Module:
  spec = config_schema.neuron_spec(config.neuron)
  factory = NeuronFactory(spec, config.num_steps, pn_kappa=config.loss.pn_kappa)
  return models.build_model(config.model, factory, input_shape=info.input_shape,
                            num_classes=info.num_classes, static_input=info.static_input,
                            rngs=rngs, vocab_size=info.vocab_size)


def model_input(batch: dict, static_input: bool) -> jax.Array:
  """Batches are example-major; event examples ``[B, T, ...]`` become time-major ``[T, B, ...]``."""
  x = batch["image"]
  return x if static_input else jnp.swapaxes(x, 0, 1)


def _forward_metrics(model: nnx.Module, batch: dict, loss_cfg: Any):
  logits_TBK, aux = model(model_input(batch, model.static_input))
  labels = batch["label"]
  task = losses.task_loss(loss_cfg.name, logits_TBK, labels,
                          label_smoothing=loss_cfg.label_smoothing,
                          tet_lambda=loss_cfg.tet_lambda, tet_phi=loss_cfg.tet_phi)
  pn = losses.pn_loss(aux, loss_cfg.pn_variant)
  loss = task + loss_cfg.pn_weight * pn if loss_cfg.pn_weight else task
  correct = (jnp.argmax(logits_TBK.mean(0), -1) == labels).astype(jnp.float32)
  return loss, (task, pn, correct, aux)


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Casts floating leaves to ``dtype`` (mixed precision: float32 master parameters)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, tree)


def loss_and_grads(params: Any, rest: Any, batch: dict, *, graphdef, loss_cfg: Any,
                   compute_dtype: str = "float32"):
  """``((loss, (rest, task, pn, correct, aux)), grads)`` for one global batch.

  Under ``jit`` with a batch sharded over the mesh this is one SPMD program: BatchNorm and
  DS-ATGO statistics are over the global batch, gradients are global means.
  """
  dtype = jnp.dtype(compute_dtype)

  def loss_fn(params):
    compute_params = params if dtype == jnp.float32 else cast_floating(params, dtype)
    model = nnx.merge(graphdef, compute_params, rest, copy=True)
    b = batch
    if dtype != jnp.float32 and jnp.issubdtype(batch["image"].dtype, jnp.floating):
      b = dict(batch, image=batch["image"].astype(dtype))
    loss, (task, pn, correct, aux) = _forward_metrics(model, b, loss_cfg)
    new_rest = cast_floating(nnx.state(model, nnx.Not(nnx.Param)), jnp.float32)
    return loss, (new_rest, task, pn, correct, aux)

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def train_step(state: State, batch: dict, *, graphdef, tx: optax.GradientTransformation,
               loss_cfg: Any, compute_dtype: str = "float32") -> tuple[State, dict]:
  (loss, (rest, task, pn, correct, aux)), grads = loss_and_grads(
      state["params"], state["rest"], batch, graphdef=graphdef, loss_cfg=loss_cfg,
      compute_dtype=compute_dtype)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {"loss": loss, "task_loss": task, "pn_loss": pn, "accuracy": correct.mean(),
             "firing_rate": aux.rate_T.mean(), "grad_norm": optax.tree.norm(grads)}
  new_state = dict(state, params=params, rest=rest, opt_state=opt_state,
                   step=state["step"] + 1)
  return new_state, metrics


def eval_step(state: State, batch: dict, *, graphdef, loss_cfg: Any,
              compute_dtype: str = "float32") -> dict:
  dtype = jnp.dtype(compute_dtype)
  params = state["params"] if dtype == jnp.float32 else cast_floating(state["params"], dtype)
  if dtype != jnp.float32 and jnp.issubdtype(batch["image"].dtype, jnp.floating):
    batch = dict(batch, image=batch["image"].astype(dtype))
  model = nnx.merge(graphdef, params, state["rest"])
  loss, (_, _, correct, aux) = _forward_metrics(model, batch, loss_cfg)
  mask = batch["mask"]
  return {"correct": (correct * mask).sum(), "count": mask.sum(),
          "loss_sum": loss * mask.sum(), "rate_LT": aux.rate_T}


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


def create_train_state(config: Any, info: data.sources.DatasetInfo, total_steps: int):
  """``(graphdef, eval_graphdef, state, tx, num_params)`` for a fresh run of ``config``."""
  key = jax.random.key(config.seed)
  model = build_model(config, info, nnx.Rngs(params=jax.random.fold_in(key, 0)))
  num_params = models.count_params(model)
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optim.make_optimizer(config.optimizer, total_steps)
  state: State = {"params": params, "rest": rest, "opt_state": tx.init(params),
                  "step": jnp.zeros((), jnp.int32),
                  "rng": jax.random.key_data(jax.random.fold_in(key, 1))}
  return graphdef, eval_graphdef, state, tx, num_params


def train_and_evaluate(config: Any, workdir: str) -> dict:
  config_schema.validate_config(config)
  is_writer = jax.process_index() == 0
  if is_writer:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  num_devices = jax.device_count()
  pipeline.check_batch_size(config.batch_size, jax.process_count(), num_devices)

  splits = data.load_dataset(config)
  info = splits.info
  steps_per_epoch, total_steps = _steps(config, len(splits.train))
  eval_every = config.eval_every_steps or steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or steps_per_epoch

  graphdef, eval_graphdef, state, tx, num_params = create_train_state(config, info,
                                                                      total_steps)
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  state = jax.device_put(state, replicated)

  def to_global(batch: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(batch_sharding, v)
            for k, v in batch.items()}

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

  p_train = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx,
                                      loss_cfg=config.loss,
                                      compute_dtype=config.compute_dtype),
                    donate_argnums=(0,), out_shardings=(replicated, replicated))
  p_eval = jax.jit(functools.partial(eval_step, graphdef=eval_graphdef, loss_cfg=config.loss,
                                     compute_dtype=config.compute_dtype))

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
        neuron_scalars = spiking_stats.neuron_scalars(
            nnx.merge(eval_graphdef, state["params"], state["rest"]))
        if neuron_scalars:
          writer.write(done, "neurons", neuron_scalars)
      if is_writer and jax.process_count() == 1:  # TensorBoard: per-layer rates, potentials
        writer.write_spiking_stats(done, spiking_stats.collect_spiking_stats(nnx.merge(
            eval_graphdef, state["params"], state["rest"]), [next(iter(eval_batches))]))
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
  if is_writer:
    curves.plot_training_curves(workdir)
    if config.analysis_report:  # firing rates, potentials, gradient availability, energy
      analysis = report.write_training_report(eval_graphdef, state, eval_batches, workdir)
      summary["energy_mj_per_image"] = analysis["energy_mj_per_image"]
      summary["grad_available_share"] = analysis["grad_available_share"]
  writer.write_figures(total_steps, workdir)  # the end-of-run PNGs as TensorBoard images
  writer.write(total_steps, "summary", summary)
  writer.write_hparams(config, summary)
  writer.close()
  if is_writer:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    energy = (f"energy={summary['energy_mj_per_image']:.3g}mJ/image "
              if "energy_mj_per_image" in summary else "")
    print(f"final: test_accuracy={summary['test_accuracy']:.4f} "
          f"best_test_accuracy={summary['best_test_accuracy']:.4f} "
          f"firing_rate={summary['test_firing_rate']:.4f} {energy}"
          f"train_time={summary['train_time_s']:.1f}s "
          f"images/s={summary['images_per_s']:.0f} workdir={workdir}", flush=True)
  summary["state"] = state
  return summary


def _log_train(writer: MetricWriter, bar, step: int, metrics: dict, every: int,
               force: bool = False) -> None:
  bar.update(step - bar.n)
  if force or step % max(every, 1) == 0:
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    writer.write(step, "train", host)
    writer.write_learning_rate(step)
    bar.set_postfix(loss=f"{host['loss']:.3f}", acc=f"{host['accuracy']:.3f}")
