"""The training state and the jitted train / eval steps: one builder for the loop, the
benchmarks and the tests.

Contract:
- ``create_train_state(config, info, total_steps) -> TrainSetup``: the model's train- and
  eval-mode graphdefs, the state dict (``params``, ``rest`` = non-parameter model state such as
  BN statistics and DS-ATGO thresholds, ``opt_state``, ``step``), the optax transformation
  and the parameter count, for a fresh run of ``config``.
- ``loss_and_grads(params, rest, batch, *, graphdef, loss_cfg, compute_dtype) ->
  LossAndGrads``; ``train_step(state, batch, ...) -> (state, metrics)``;
  ``eval_step(state, batch, ...) -> sums`` (pure functions; ``compute_dtype`` casts parameters
  and floating inputs once, in ``_in_compute_dtype``, float32 master parameters stay).
- ``make_steps(config, setup, devices=None) -> Steps``: one ``jax.make_mesh`` axis ``data``
  over every device (or ``devices``); the train step jitted with the state donated and
  replicated outputs, the eval step jitted; ``place(state)`` replicates a state,
  ``to_global(batch)`` shards a process-local batch over the mesh. Under this jit the step
  is one SPMD program: BatchNorm and DS-ATGO statistics are over the global batch, gradients
  are global means.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cfsnn_jax import models
from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.training import losses, optim, guard as run_guard
from cfsnn_jax.neuron.layers import NeuronFactory
from cfsnn_jax.neuron.equations import NeuronStats

State = dict[str, Any]


class TrainSetup(NamedTuple):
  graphdef: Any  # train mode
  eval_graphdef: Any  # eval mode (BN running averages, DS-ATGO EMA thresholds)
  state: State
  tx: optax.GradientTransformation
  num_params: int


class LossAndGrads(NamedTuple):
  loss: jax.Array  # task + pn_weight * pn
  grads: Any  # of ``params``
  rest: Any  # updated non-parameter model state (float32)
  task: jax.Array
  pn: jax.Array
  correct_B: jax.Array  # 1.0 where the time-mean logits' argmax is the label
  stats: NeuronStats  # fields [L, T]


class Steps(NamedTuple):
  mesh: jax.sharding.Mesh
  train: Callable[[State, dict], tuple[State, dict]]  # jitted, donates the state
  eval: Callable[[State, dict], dict]  # jitted
  place: Callable[[State], State]  # replicate over the mesh
  to_global: Callable[[dict], dict]  # process-local numpy batch -> sharded global arrays


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
  """One ``data`` axis over every device (of every process) or over ``devices``."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def build_model(config: Any, info: Any, rngs: nnx.Rngs) -> nnx.Module:
  spec = config_schema.neuron_spec(config.neuron)
  factory = NeuronFactory(spec, config.num_steps, pn_kappa=config.loss.pn_kappa)
  return models.build_model(config.model, factory, input_shape=info.input_shape,
                            num_classes=info.num_classes, static_input=info.static_input,
                            rngs=rngs, vocab_size=info.vocab_size)


def create_train_state(config: Any, info: Any, total_steps: int) -> TrainSetup:
  model = build_model(config, info, nnx.Rngs(params=jax.random.fold_in(
      jax.random.key(config.seed), 0)))
  num_params = models.count_params(model)
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optim.make_optimizer(config.optimizer, total_steps)
  state: State = {"params": params, "rest": rest, "opt_state": tx.init(params),
                  "step": jnp.zeros((), jnp.int32)}
  return TrainSetup(graphdef, eval_graphdef, state, tx, num_params)


def model_input(batch: dict, static_input: bool) -> jax.Array:
  """Batches are example-major; event examples ``[B, T, ...]`` become time-major ``[T, B, ...]``."""
  x = batch["image"]
  return x if static_input else jnp.swapaxes(x, 0, 1)


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Casts floating leaves to ``dtype`` (mixed precision: float32 master parameters)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, tree)


def _in_compute_dtype(params: Any, batch: dict, compute_dtype: str) -> tuple[Any, dict]:
  """Parameters and floating inputs in the compute dtype (no-op for float32)."""
  dtype = jnp.dtype(compute_dtype)
  if dtype == jnp.float32:
    return params, batch
  if jnp.issubdtype(batch["image"].dtype, jnp.floating):
    batch = dict(batch, image=batch["image"].astype(dtype))
  return cast_floating(params, dtype), batch


def _forward_metrics(model: nnx.Module, batch: dict, loss_cfg: Any):
  logits_TBK, stats = model(model_input(batch, model.static_input))
  labels = batch["label"]
  task = losses.task_loss(loss_cfg.name, logits_TBK, labels,
                          label_smoothing=loss_cfg.label_smoothing,
                          tet_lambda=loss_cfg.tet_lambda, tet_phi=loss_cfg.tet_phi)
  pn = losses.pn_loss(stats, loss_cfg.pn_variant)
  loss = task + loss_cfg.pn_weight * pn if loss_cfg.pn_weight else task
  correct_B = (jnp.argmax(logits_TBK.mean(0), -1) == labels).astype(jnp.float32)
  return loss, task, pn, correct_B, stats


def loss_and_grads(params: Any, rest: Any, batch: dict, *, graphdef, loss_cfg: Any,
                   compute_dtype: str = "float32") -> LossAndGrads:
  """Loss, gradients and the updated model state for one global batch."""

  def loss_fn(params):
    compute_params, b = _in_compute_dtype(params, batch, compute_dtype)
    model = nnx.merge(graphdef, compute_params, rest, copy=True)
    loss, task, pn, correct_B, stats = _forward_metrics(model, b, loss_cfg)
    new_rest = cast_floating(nnx.state(model, nnx.Not(nnx.Param)), jnp.float32)
    return loss, (new_rest, task, pn, correct_B, stats)

  (loss, (new_rest, task, pn, correct_B, stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(params)
  return LossAndGrads(loss, grads, new_rest, task, pn, correct_B, stats)


def train_step(state: State, batch: dict, *, graphdef, tx: optax.GradientTransformation,
               loss_cfg: Any, compute_dtype: str = "float32") -> tuple[State, dict]:
  out = loss_and_grads(state["params"], state["rest"], batch, graphdef=graphdef,
                       loss_cfg=loss_cfg, compute_dtype=compute_dtype)
  updates, opt_state = tx.update(out.grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {"loss": out.loss, "task_loss": out.task, "pn_loss": out.pn,
             "accuracy": out.correct_B.mean(), "firing_rate": out.stats.rate_T.mean(),
             "grad_norm": optax.tree.norm(out.grads)}
  metrics["finite"] = run_guard.tree_finite(
      {"loss": out.loss, "grad_norm": metrics["grad_norm"], "params": params})
  new_state = dict(state, params=params, rest=out.rest, opt_state=opt_state,
                   step=state["step"] + 1)
  return new_state, metrics


def eval_step(state: State, batch: dict, *, graphdef, loss_cfg: Any,
              compute_dtype: str = "float32") -> dict:
  params, batch = _in_compute_dtype(state["params"], batch, compute_dtype)
  model = nnx.merge(graphdef, params, state["rest"])
  loss, _, _, correct_B, stats = _forward_metrics(model, batch, loss_cfg)
  mask = batch["mask"]
  return {"correct": (correct_B * mask).sum(), "count": mask.sum(),
          "loss_sum": loss * mask.sum(), "rate_LT": stats.rate_T}


def make_steps(config: Any, setup: TrainSetup, devices: list | None = None) -> Steps:
  mesh = make_mesh(devices)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  p_train = jax.jit(functools.partial(train_step, graphdef=setup.graphdef, tx=setup.tx,
                                      loss_cfg=config.loss,
                                      compute_dtype=config.compute_dtype),
                    donate_argnums=(0,), out_shardings=(replicated, replicated))
  p_eval = jax.jit(functools.partial(eval_step, graphdef=setup.eval_graphdef,
                                     loss_cfg=config.loss, compute_dtype=config.compute_dtype))

  def to_global(batch: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(batch_sharding, v)
            for k, v in batch.items()}

  return Steps(mesh, p_train, p_eval, lambda state: jax.device_put(state, replicated),
               to_global)
