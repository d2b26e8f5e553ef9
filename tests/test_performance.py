"""Performance machinery (docs/PERFORMANCE.md): the fused BPTT neuron equals the autodiff
reference, rematerialisation changes memory and not values, the ANN twin runs, the train and
eval steps compile once across steps and epochs, and the benchmark entry point runs."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfsnn_jax import models
from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.neuron import layers, equations as neurons, fused as neurons_fused
from cfsnn_jax.training import steps
from cfsnn_jax.data.sources import DatasetInfo
from cfsnn_jax.config import resolve
from cfsnn_jax import backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _max_rel_err(ref, got):
  errs = []
  for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    r, g = np.asarray(r, np.float32), np.asarray(g, np.float32)
    errs.append(float(np.max(np.abs(r - g)) / (1e-6 + np.max(np.abs(r)))))
  return max(errs)


# ----------------------------------------------------------------------------- fused BPTT

SPECS = [
    ("cf", {}), ("lif", {}), ("plif", {}), ("if", {}), ("cf_signed", {}), ("dsatgo", {}),
    ("cf", dict(reset="hard")), ("cf", dict(reset="hard", signed=True)),
    ("cf", dict(detach_reset=True)), ("lif", dict(detach_reset=True)),
    ("cf", dict(decay_input=True)), ("cf", dict(surrogate="atan")),
    ("cf", dict(surrogate="triangle", levels=3)), ("lif", dict(surrogate="rectangular")),
    ("cf", dict(threshold_mode="adaptive")), ("cf", dict(surrogate_mode="dynamic")),
    ("lif", dict(reset="hard", v_reset=-0.2)),
]


@pytest.mark.parametrize("unroll", [1, True])
@pytest.mark.parametrize("name,overrides", SPECS)
def test_fused_bptt_equals_autodiff(name, overrides, unroll):
  """Values and gradients (x, alpha, decay, theta) of the hand-written backward scan equal
  jax's derivative of the forward scan, through S, H and the thresholds used."""
  spec = neurons.resolve_spec(name, **overrides)
  T = 5
  x = jax.random.normal(jax.random.key(1), (T, 4, 6)) * 1.5 + 0.6
  w_s, w_h = (jax.random.normal(jax.random.key(k), x.shape) for k in (2, 3))
  w_th = jax.random.normal(jax.random.key(4), (T,))

  def loss(x, alpha, decay, theta, bptt):
    S, H, th = neurons_fused.run_neuron(x, spec, alpha_T=alpha, decay=decay, theta_T=theta,
                                        unroll=unroll, bptt=bptt)
    return jnp.sum(S * w_s) + jnp.sum(jnp.tanh(H) * w_h) + jnp.sum(th * w_th)

  args = (x, jnp.linspace(2.0, 4.0, T), jnp.float32(0.45), jnp.linspace(0.8, 1.2, T))
  grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
  ref = grad(*args, "autodiff")
  got = jax.jit(grad, static_argnums=4)(*args, "fused")
  assert _max_rel_err(ref, got) < 1e-5
  assert np.abs(np.asarray(got[1][0])).sum() > 0  # the test sees a real gradient


@pytest.mark.parametrize("name,unroll", [("cf", True), ("cf_signed", True), ("dsatgo", True),
                                         ("plif", True), ("cf_signed", 1)])
def test_statistics_from_the_fused_pass_equal_statistics_of_h(name, unroll):
  """``run_neuron_with_stats``: PN moments computed inside the neuron (their cotangents
  enter the backward scan as [T] vectors) give the layer's old values and gradients."""
  spec = neurons.resolve_spec(name)
  T, kappa = 4, 0.7
  x = jax.random.normal(jax.random.key(5), (T, 3, 8)) * 1.5 + 0.5
  w = jax.random.normal(jax.random.key(6), x.shape)

  def reference(x, alpha, decay):
    S, H, _ = neurons.run_neuron(x, spec, alpha_T=alpha, decay=decay)  # the reference
    pos, neg = jnp.mean(jax.nn.relu(H), axis=(1, 2)), jnp.mean(jax.nn.relu(-H), axis=(1, 2))
    tanh = jnp.mean(jnp.tanh(kappa * H), axis=(1, 2))
    return jnp.sum(S * w) + jnp.sum((pos - neg) ** 2) + 3 * jnp.sum(tanh ** 2)

  def fused(x, alpha, decay):
    S, H, st = neurons_fused.run_neuron_with_stats(x, spec, alpha_T=alpha, decay=decay,
                                                   pn_kappa=kappa, unroll=unroll)
    assert H is None  # not materialised unless asked for
    return (jnp.sum(S * w) + jnp.sum((st.h_pos_T - st.h_neg_T) ** 2)
            + 3 * jnp.sum(st.h_tanh_T ** 2))

  args = (x, jnp.full((T,), 3.0), jnp.float32(0.4))
  ref = jax.value_and_grad(reference, argnums=(0, 1, 2))(*args)
  got = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(*args)
  assert _max_rel_err(ref, got) < 1e-5
  S, _, st = neurons_fused.run_neuron_with_stats(x, spec, alpha_T=args[1], decay=args[2],
                                                 pn_kappa=kappa, unroll=unroll)
  np.testing.assert_allclose(st.rate_T, jnp.mean(jnp.abs(S), axis=(1, 2)), rtol=1e-6)


def test_unrolled_and_scanned_time_loops_agree():
  spec = neurons.resolve_spec("cf")
  x = jax.random.normal(jax.random.key(7), (6, 2, 5)) * 2
  a = jnp.full((6,), 4.0)
  outs = [neurons_fused.run_neuron(x, spec, alpha_T=a, decay=0.5, unroll=u)
          for u in (1, 2, True)]
  for o in outs[1:]:
    for p, q in zip(outs[0], o):
      np.testing.assert_array_equal(p, q)


# ----------------------------------------------------------------------------- models

T = 2
K = 5
TINY = {  # registry name -> (kwargs, input shape, static input)
    "resnet19": (dict(widths=(8, 8, 16), stage_blocks=(1, 1, 1), head_hidden=8), (8, 8, 3),
                 True),
    "vggsnn": (dict(layout=(8, "A", 8, "A")), (8, 8, 2), False),
    "spikformer": (dict(embed_dim=16, depth=1, num_heads=2), (8, 8, 3), True),
    "text_transformer": (dict(embed_dim=16, depth=1, num_heads=2, vocab_size=20), (6,), True),
    "mlp": (dict(hidden=(16, 16)), (12,), True),
    "convnet": (dict(channels=(4, 8), hidden=8), (8, 8, 1), True),
}


def _tiny(name, remat="none", neuron="cf", activation=None, steps=T):
  kw, shape, static = TINY[name]
  spec = neurons.resolve_spec(neuron, activation=activation)
  factory = layers.NeuronFactory(spec, steps)
  model = models.MODELS[name](input_shape=shape, num_classes=K, neuron=factory,
                              static_input=static, remat=remat,
                              rngs=nnx.Rngs(jax.random.key(0, impl="rbg")), **kw)
  rng = np.random.default_rng(0)
  if name == "text_transformer":
    x = jnp.asarray(rng.integers(1, kw["vocab_size"], (2,) + shape), jnp.int32)
  else:
    x = jnp.asarray(rng.normal(size=((2,) if static else (steps, 2)) + shape), jnp.float32)
  return model, x


def _loss_grads_stats(model, x):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params):
    m = nnx.merge(graphdef, params, rest, copy=True)
    logits, aux = m(x)
    loss = jnp.mean(logits ** 2) + jnp.mean((aux.h_pos_T - aux.h_neg_T) ** 2)
    return loss, nnx.state(m, nnx.BatchStat)

  (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  return loss, grads, stats


REMAT_CASES = {  # every family against "none"; every mode on the cheapest model
    "mlp": ("neuron", "block", "block_full"), "resnet19": ("block", "block_full"),
    "vggsnn": ("block_full",), "spikformer": ("block",), "text_transformer": ("block_full",),
    "convnet": ("neuron",),
}


@pytest.mark.parametrize("name", sorted(REMAT_CASES))
def test_remat_gives_the_same_loss_gradients_and_statistics(name):
  ref = _loss_grads_stats(*_tiny(name))
  for remat in REMAT_CASES[name]:
    got = _loss_grads_stats(*_tiny(name, remat))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ref[1:]), jax.tree.leaves(got[1:])):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(ref[1]))


def _count_primitive(model, x, prim):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params):
    return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x)[0])
  # the portable program (the CPU branch of a platform-dependent program is traced beside it)
  with backends.reference_convolutions():
    return str(jax.make_jaxpr(jax.grad(loss_fn))(params)).count(prim)


def test_remat_recomputes_in_the_backward_pass():
  """``block_full`` recomputes every checkpointed conv; ``block`` keeps conv outputs."""
  convs = {r: _count_primitive(*_tiny("resnet19", r), "conv_general_dilated[")
           for r in ("none", "block", "block_full")}
  assert convs["block_full"] > convs["none"], convs
  assert convs["block"] == convs["none"], convs


def test_remat_lowers_xla_peak_memory():
  """On XLA:CPU (memory_analysis of the compiled step) a checkpointed model needs less
  memory; this would fail if the backend hoisted the recomputation into the forward."""
  spec = neurons.resolve_spec("cf")
  x = jnp.zeros((4, 16, 16, 3))
  peaks = {}
  for remat in ("none", "block_full"):
    model = models.MODELS["resnet19"](
        input_shape=(16, 16, 3), num_classes=K, neuron=layers.NeuronFactory(spec, 4),
        static_input=True, remat=remat, widths=(16, 16, 16), stage_blocks=(2, 1, 1),
        head_hidden=0, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
      return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x)[0])
    m = jax.jit(jax.grad(loss_fn)).lower(params).compile().memory_analysis()
    peaks[remat] = m.temp_size_in_bytes
  assert peaks["block_full"] < 0.8 * peaks["none"], peaks


def test_bad_remat_fails_with_one_line():
  with pytest.raises(ValueError, match="valid choices: none, neuron, block, block_full"):
    _tiny("mlp", remat="everything")
  config = config_schema.base_config()
  config.model.remat = "blok"
  with pytest.raises(ValueError, match="unknown remat 'blok'"):
    config_schema.validate_config(config)


# ----------------------------------------------------------------------------- ANN twin

def test_relu_ann_twin_runs_with_the_same_aux_structure():
  snn, x = _tiny("resnet19")
  ann, _ = _tiny("resnet19", activation="relu", steps=T)
  logits, aux = nnx.jit(lambda m, x: m(x))(ann, x)
  chex.assert_shape(logits, (T, 2, K))
  chex.assert_tree_all_finite(logits)
  _, snn_aux = nnx.jit(lambda m, x: m(x))(snn, x)
  chex.assert_trees_all_equal_shapes(aux, snn_aux)
  assert all(float(jnp.abs(f).sum()) == 0.0 for f in aux)
  # Same layers, no neuron parameters: the twin has exactly T surrogate logits fewer per layer.
  n_neurons = snn_aux.rate_T.shape[0]
  assert models.count_params(snn) - models.count_params(ann) == n_neurons * T
  # a ReLU network: outputs are not integer spikes
  _, grads, _ = _loss_grads_stats(ann, x)
  assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads))


def test_ann_twin_trains_through_the_train_step():
  config = _train_config()
  config.neuron.activation = "relu"
  config.num_steps = 1
  info = DatasetInfo("synthetic", K, (8, 8, 3), static_input=True, synthetic=True)
  setup = steps.create_train_state(resolve(config), info, total_steps=10)
  built = steps.make_steps(resolve(config), setup)
  step, state = built.train, built.place(setup.state)
  batch = built.to_global(_batch(np.random.default_rng(0), (8, 8, 3)))
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert float(metrics["firing_rate"]) == 0.0  # the twin reports no spikes


# ----------------------------------------------------------------------------- compilation

def _train_config():
  config = config_schema.base_config()
  config.model.name = "resnet19"
  config.model.widths = (8, 8, 16)
  config.model.stage_blocks = (1, 1, 1)
  config.model.head_hidden = 8
  config.num_steps = T
  config.batch_size = 8
  config.optimizer.learning_rate = 1e-2
  return config


def _batch(rng, shape, n=8):
  return {"image": rng.normal(size=(n,) + shape).astype(np.float32),
          "label": rng.integers(0, K, (n,)).astype(np.int32),
          "mask": np.ones((n,), np.float32)}


def test_train_and_eval_steps_compile_once_across_steps_and_epochs():
  """The loop's jitted train step (``steps.make_steps``: donated state, replicated
  out_shardings, 4 devices) and eval step compile once each; more steps, an eval between
  "epochs" and a second epoch add no compilation (counted with jax.monitoring and each jit's
  cache)."""
  config = _train_config()
  info = DatasetInfo("synthetic", K, (8, 8, 3), static_input=True, synthetic=True)
  setup = steps.create_train_state(resolve(config), info, 100)
  built = steps.make_steps(resolve(config), setup)
  p_train, p_eval, state = built.train, built.eval, built.place(setup.state)
  rng = np.random.default_rng(0)
  batches = [built.to_global(_batch(rng, (8, 8, 3))) for _ in range(4)]
  compiles = []

  def listener(name, *_, **__):
    if name == "/jax/core/compile/backend_compile_duration":
      compiles.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  cache_was = jax.config.jax_enable_compilation_cache  # a persistent-cache hit compiles nothing
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    state, _ = p_train(state, batches[0])  # first compilations
    jax.block_until_ready(p_eval(state, batches[0]))
    first = len(compiles)
    for epoch in range(2):
      for b in batches:
        state, metrics = p_train(state, b)
      float(metrics["loss"])
      for b in batches[:2]:
        jax.block_until_ready(p_eval(state, b))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.config.update("jax_enable_compilation_cache", cache_was)
  assert first >= 2  # the listener sees compilations at all
  assert len(compiles) == first, f"{len(compiles) - first} recompilation(s)"
  assert p_train._cache_size() == 1 and p_eval._cache_size() == 1


# ----------------------------------------------------------------------------- benchmark

def test_benchmark_entry_point_runs_end_to_end(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "benchmarks.run", "--models=resnet19", "--tiny", "--num_steps=2",
       "--remat=none", "--ann_num_steps=1", "--steps=2", "--warmup=1", "--batch=4",
       "--no_isolate",
       f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["machine"]["cpu_cores"] >= 1 and report["machine"]["jax"] == jax.__version__
  kinds = {(x["case"]["ann"], x["case"]["num_steps"]) for x in report["results"]}
  assert kinds == {(True, 1), (False, 2)}  # the ANN twin at T = 1 and the SNN
  for x in report["results"]:
    assert "error" not in x, x
    assert x["images_per_s"] > 0 and x["xla_peak_bytes"] > 0 and x["finite"]
    assert len(x["step_s_all"]) == 2
  summary = report["summary"]["resnet19/float32"]
  assert summary["memory_vs_T/none"] == {"2": 1.0}
  assert "| resnet19-tiny | ANN | 1" in r.stdout  # the printed table


# ----------------------------------------------------------------------------- peers

def test_peer_models_have_the_tet_parameter_count():
  """benchmarks.peers compares equal models: TET ResNet-19 has 12,653,988 parameters in both
  frameworks (SpikingJelly side skipped when the optional ``peers`` extra is missing)."""
  from benchmarks.cases import BENCH_MODELS, Case, case_config, dataset_info
  config = case_config(Case("resnet19_tet", 4, 8))
  model = steps.build_model(resolve(config), dataset_info(Case("resnet19_tet", 4, 8)),
                            nnx.Rngs(jax.random.key(0)))
  assert models.count_params(model) == 12_653_988
  pytest.importorskip("torch")
  pytest.importorskip("spikingjelly")
  from benchmarks import peers
  sj, _ = peers._sj_model("resnet19_tet", tiny=False, num_steps=4)
  assert sum(p.numel() for p in sj.parameters()) == 12_653_988
  assert BENCH_MODELS["resnet19_tet"]["model"]["stem_width"] == 64


def test_peers_benchmark_runs_interleaved_on_tiny_models():
  pytest.importorskip("torch")
  pytest.importorskip("spikingjelly")
  from benchmarks import peers
  rows = peers.compare(["resnet19_tet"], [4], steps=2, tiny=True)
  (r,) = rows
  assert r["steps"]["jax"][0]["wall_s"] > 0 and len(r["steps"]["sj"]) == 2
  assert r["jax_step_s"] > 0 and r["sj_step_s"] > 0 and r["ratio_wall"] > 0
  assert np.isfinite([s["loss"] for k in ("jax", "sj") for s in r["steps"][k]]).all()
  assert all(0 < s["util"] for s in r["steps"]["jax"])


def test_device_check_covers_the_accelerator_cases_and_runs_on_cpu(tmp_path):
  """``--device_check``: the full case list is the issue's (ResNet-19 T=4 at 64/128 in fp32
  and bf16, VGGSNN T=10, Spikformer); its tiny form runs here on CPU (one model, one step)."""
  from benchmarks import run
  full = {(c.model, c.num_steps, c.batch, c.dtype) for c in run.device_check_cases(tiny=False)}
  assert full == {("resnet19", 4, 64, "float32"), ("resnet19", 4, 128, "float32"),
                  ("resnet19", 4, 64, "bfloat16"), ("resnet19", 4, 128, "bfloat16"),
                  ("vggsnn", 10, 64, "float32"), ("spikformer", 4, 64, "float32")}
  assert run.device_peak("NVIDIA H200", "bfloat16") == 989e12
  assert run.device_peak("cpu", "float32") is None
  out = tmp_path / "dc.json"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "benchmarks.run", "--device_check", "--tiny", "--models=vggsnn",
       "--steps=1", "--warmup=0", "--skip_training_run", f"--out={out}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  report = json.loads(out.read_text())
  (res,) = report["results"]
  assert res["case"]["model"] == "vggsnn" and res["step_s_median"] > 0 and res["finite"]
  assert report["machine"]["cpu_tuning"]["enabled"]  # the CLI's CPU settings, reported
  assert "| vggsnn-tiny SNN T=2" in r.stdout


def test_op_profile_classifies_the_three_convolutions_of_a_gradient():
  """benchmarks.op_profile's op classes (the per-class before/after table of
  docs/PERFORMANCE.md) tell forward, input-gradient and weight-gradient convs apart, by
  library."""
  from benchmarks.op_profile import classify
  from cfsnn_jax.backends import xla_cpu
  x, w = jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))

  def loss(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y))
  low = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w)
  for opts, lib in ((xla_cpu.compiler_options(), "xla"), ({}, "ynn")):
    got = {v for v in classify(low.compile(compiler_options=opts).as_text()).values()}
    convs = {c for c, _ in got if c.startswith("conv")}
    assert convs == {"conv_fwd", "conv_dgrad", "conv_wgrad"}, got
    assert {l for c, l in got if c.startswith("conv")} == {lib}, got


# the suite's persistent compilation cache cannot serialise oneDNN fusions (harmless)
@pytest.mark.filterwarnings("ignore:Error writing persistent compilation cache entry")
def test_bf16_paths_benchmark_times_every_path_and_its_matmul_conv_is_the_convolution(
    monkeypatch):
  """``benchmarks.bf16_paths`` (the bf16 section of docs/PERFORMANCE.md), tiny shapes: every
  dot dtype x option-set row and every convolution row is timed, and the conv-as-matmul
  prototype whose cost it reports computes the same output and gradients as XLA's conv."""
  from benchmarks import bf16_paths
  # in-process: keep its process-wide CPU settings (XLA_FLAGS, mallopt) off this test worker
  monkeypatch.setattr(bf16_paths.xla_cpu, "apply", lambda: {"enabled": False})
  rep = bf16_paths.main(["--n=2", "--hw=6", "--c=8", "--reps=1"])
  assert len(rep["dots"]) == 3 * len(bf16_paths.option_sets())
  assert all(r["wall_ms"] > 0 and r["gflops"] > 0 for r in rep["dots"])
  errs = {r["case"]: r["rel_err"] for r in rep["conv"]}
  assert errs["xla_conv float32"] == 0.0 and errs["conv_as_matmul float32"] < 1e-5
  assert 0 < errs["conv_as_matmul bfloat16"] < 3e-2 and 0 < errs["xla_conv bfloat16"] < 3e-2
  assert rep["conv"][-1]["case"].startswith("im2col") and rep["conv"][-1]["wall_ms"] > 0
