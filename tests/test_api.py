"""The public API of docs/API.md: every name listed there imports from its package face and runs
on a tiny input. The list is parsed from the file, so a name added to the doc without being
importable and exercised here fails, as does a name the package loses."""

import importlib
import itertools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfsnn_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_MD = os.path.join(ROOT, "docs", "API.md")


def listed_names() -> list[tuple[str, str]]:
  """``(package face, name)`` for every ``- `name` —`` line under a ``### ... (`pkg`)`` heading."""
  out, face = [], None
  for line in open(API_MD, encoding="utf-8"):
    heading = re.match(r"### .*\(`(cfsnn_jax[\w.]*)`\)\s*$", line)
    if heading:
      face = heading.group(1)
      continue
    if line.startswith("#"):
      face = None
    item = re.match(r"- `(\w+)` — ", line)
    if item and face:
      out.append((face, item.group(1)))
  return out


def test_the_api_list_is_parsed():
  names = listed_names()
  assert len(names) > 60 and len(set(names)) == len(names)
  assert ("cfsnn_jax.neuron", "SpikingNeuron") in names
  assert {face for face, _ in names} >= {"cfsnn_jax.config", "cfsnn_jax.neuron",
                                         "cfsnn_jax.training", "cfsnn_jax.interop",
                                         "cfsnn_jax.analysis", "cfsnn_jax.backends"}


@pytest.mark.parametrize("face,name", listed_names())
def test_every_listed_name_imports_from_its_face(face, name):
  assert getattr(importlib.import_module(face), name) is not None


class Face:
  """``api("cfsnn_jax.neuron", "run_neuron")``: the name from its face, recorded as exercised."""

  def __init__(self):
    self.used: set[tuple[str, str]] = set()

  def __call__(self, face: str, *names: str):
    self.used.update((face, n) for n in names)
    module = importlib.import_module(face)
    values = [getattr(module, n) for n in names]
    return values[0] if len(values) == 1 else values


def _one_line(fn, match: str) -> None:
  with pytest.raises(UserError, match=match) as e:
    fn()
  assert "\n" not in str(e.value)


def _configs(api: Face, tmp_path):
  from cfsnn_jax.configs import default
  resolve, ResolvedRun, validate_config, base_config, neuron_config, make_tiny, describe = api(
      "cfsnn_jax.config", "resolve", "ResolvedRun", "validate_config", "base_config",
      "neuron_config", "make_tiny", "describe")
  config = default.get_config("tiny")
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  config.analysis_report = False
  run = resolve(config)
  assert isinstance(run, ResolvedRun) and resolve(run) is run
  assert run.neuron == validate_config(config) and run.neuron.levels == 4
  assert "batch_size" in describe() and base_config().neuron.name == "cf"
  assert neuron_config("lif", levels=2).levels == 2
  tiny = default.get_config()
  make_tiny(tiny)
  assert tiny.data_dir == "fixture" and tiny.num_train_steps == 3
  bad = default.get_config("tiny")
  bad.batch_size = 0
  _one_line(lambda: resolve(bad), "batch_size")
  return run


def _neuron(api: Face):
  (NeuronSpec, resolve_spec, NEURON_PRESETS, spec_dict, lif_decay, run_neuron,
   run_neuron_with_stats, neuron_step, spike, smooth_staircase, SURROGATES, surrogate_grad,
   alpha_from_rho, NeuronStats) = api(
      "cfsnn_jax.neuron", "NeuronSpec", "resolve_spec", "NEURON_PRESETS", "spec_dict",
      "lif_decay", "run_neuron", "run_neuron_with_stats", "neuron_step", "spike",
      "smooth_staircase", "SURROGATES", "surrogate_grad", "alpha_from_rho", "NeuronStats")
  _one_line(lambda: NeuronSpec(levels=0), "levels D must be an integer >= 1")
  spec = resolve_spec("cf")
  assert "cf" in NEURON_PRESETS and spec_dict(spec)["levels"] == 4
  x_TB = jnp.array([[0.4, 1.3], [2.7, 0.2], [4.6, 0.0]])
  alpha_T = jnp.full((3,), spec.alpha)
  S_TB, H_TB, theta_T = run_neuron(x_TB, spec, alpha_T=alpha_T, decay=lif_decay(spec))
  assert S_TB.shape == (3, 2) and theta_T.shape == (3,)
  assert float(S_TB[0, 1]) == 1.0 and float(H_TB[0, 0]) == pytest.approx(0.4)  # H = x at t=0
  S_fast, _, stats = run_neuron_with_stats(x_TB, spec, alpha_T=alpha_T, decay=lif_decay(spec))
  np.testing.assert_array_equal(S_fast, S_TB)
  assert isinstance(stats, NeuronStats) and stats.rate_T.shape == (3,)
  u, (s, h, _, _) = neuron_step(jnp.zeros(2), x_TB[0], alpha_T[0], jnp.float32(1.0),
                                lam=lif_decay(spec), in_scale=None, spec=spec,
                                use_adaptive=False, differentiable=True)
  np.testing.assert_array_equal(s, S_TB[0])
  assert float(spike(jnp.float32(2.5), 1.0, 4.0, 4, False, "sigmoid")) == 2.0
  smooth = float(smooth_staircase(jnp.float32(2.5), 1.0, 4.0, 4, False, "sigmoid"))
  assert 1.5 < smooth < 2.5  # two levels passed, the third half-way
  assert set(SURROGATES) >= {"sigmoid", "atan"}
  assert float(surrogate_grad("sigmoid", jnp.float32(0.0), 4.0)) > 0
  assert float(alpha_from_rho(jnp.float32(0.0))) == pytest.approx(np.log(2.0))
  return spec


def _layer(api: Face, spec):
  SpikingNeuron, NeuronFactory, per_step, neuron_parameters, REMATS = api(
      "cfsnn_jax.neuron", "SpikingNeuron", "NeuronFactory", "per_step", "neuron_parameters",
      "REMATS")
  _one_line(lambda: SpikingNeuron("cf", 3), "takes a NeuronSpec")
  layer = SpikingNeuron(spec, 3)
  S_TB, stats = layer(jnp.ones((3, 2, 5)) * 1.5)
  assert S_TB.shape == (3, 2, 5) and stats.rate_T.shape == (3,)
  assert isinstance(NeuronFactory(spec, 3)(), SpikingNeuron)
  dense = nnx.Linear(5, 4, rngs=nnx.Rngs(0))
  assert per_step(dense, jnp.ones((3, 2, 5))).shape == (3, 2, 4)
  assert "none" in REMATS
  return NeuronFactory(spec, 3), neuron_parameters


def _model(api: Face, factory, neuron_parameters):
  build_model, MODELS, count_params = api("cfsnn_jax.models", "build_model", "MODELS",
                                          "count_params")
  from ml_collections import ConfigDict
  model = build_model(ConfigDict({"name": "mlp", "hidden": (8,)}), factory, input_shape=(4,),
                      num_classes=3, static_input=True, rngs=nnx.Rngs(0))
  assert "mlp" in MODELS and count_params(model) > 4 * 8
  logits_TBK, aux = model(jnp.ones((2, 4)))
  assert logits_TBK.shape == (3, 2, 3) and aux.rate_T.shape[1] == 3
  assert list(neuron_parameters(model))
  _one_line(lambda: build_model(ConfigDict({"name": "mlp9"}), factory, input_shape=(4,),
                                num_classes=3, static_input=True, rngs=nnx.Rngs(0)),
            "unknown model 'mlp9'")
  return model


def _data(api: Face, run):
  (load_dataset, DATASETS, default_data_config, train_augment, eval_transform, train_iterator,
   EvalBatches) = api("cfsnn_jax.data", "load_dataset", "DATASETS", "default_data_config",
                      "train_augment", "eval_transform", "train_iterator", "EvalBatches")
  splits = load_dataset(run.config)
  assert "digits" in DATASETS and "crop" in default_data_config("cifar10")
  assert train_augment(run.config, splits.info) is None  # digits: no augmentation
  assert eval_transform(run.config, splits.info) is None
  batch = next(iter(train_iterator(splits.train, 8, 0)))
  assert batch["image"].shape[0] == 8
  batches = list(itertools.islice(iter(EvalBatches(splits.test, 8)), 2))
  assert batches[0]["mask"].shape == (8,)
  return splits, batches


def _training(api: Face, run, splits, batches, tmp_path):
  (create_train_state, TrainSetup, make_steps, Steps, build_model, train_step, eval_step,
   evaluate, make_optimizer, task_loss, pn_loss) = api(
      "cfsnn_jax.training", "create_train_state", "TrainSetup", "make_steps", "Steps",
      "build_model", "train_step", "eval_step", "evaluate", "make_optimizer", "task_loss",
      "pn_loss")
  _one_line(lambda: create_train_state(run.config, splits.info, 2), "takes a resolved run")
  setup = create_train_state(run, splits.info, 2)
  assert isinstance(setup, TrainSetup) and setup.num_params > 0
  pure_state, pure_metrics = train_step(setup.state, batches[0], graphdef=setup.graphdef,
                                        tx=setup.tx, loss_cfg=run.config.loss)
  sums = eval_step(setup.state, batches[0], graphdef=setup.eval_graphdef,
                   loss_cfg=run.config.loss)
  assert float(sums["count"]) == 8 and int(pure_state["step"]) == 1
  built = make_steps(run, setup)
  assert isinstance(built, Steps)
  state = built.place(setup.state)
  state, metrics = built.train(state, built.to_global(batches[0]))  # donates the state
  assert float(metrics["loss"]) == pytest.approx(float(pure_metrics["loss"]), rel=1e-4)
  ev = evaluate(state, built.eval, batches, built.to_global)
  assert 0.0 <= ev["accuracy"] <= 1.0
  model = build_model(run, splits.info, nnx.Rngs(0))
  logits_TBK, aux = model(jnp.asarray(batches[0]["image"]))
  labels = jnp.asarray(batches[0]["label"])
  assert float(task_loss("ce", logits_TBK, labels)) > 0
  assert np.isfinite(float(pn_loss(aux)))
  assert make_optimizer(run.config.optimizer, 10) is not None
  _one_line(lambda: make_optimizer(_with(run.config.optimizer, warmup_steps=10), 10),
            "warmup_steps=10 is not shorter than the run")


def _with(section, **changes):
  copy = section.copy_and_resolve_references()
  with copy.unlocked():
    copy.update(changes)
  return copy


def _run(api: Face, run, tmp_path):
  run_fn = api("cfsnn_jax.run", "run")
  train_and_evaluate, Trained, read_metrics = api("cfsnn_jax.training", "train_and_evaluate",
                                                  "Trained", "read_metrics")
  workdir = str(tmp_path / "run")
  trained = run_fn(run.config, workdir)
  assert isinstance(trained, Trained) and trained.summary["steps"] == 2
  assert isinstance(trained.summary["test_accuracy"], float)
  assert trained.state is not None and trained.eval_model() is not None
  again = train_and_evaluate(run, workdir)  # the finished workdir: nothing to do
  assert again.already_finished and again.summary["steps"] == 2 and again.state is None
  assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [2]
  return trained, workdir


def _nir(api: Face, tmp_path):
  pytest.importorskip("nir")
  export_nir, import_nir, write_nir, read_nir = api("cfsnn_jax.interop", "export_nir",
                                                    "import_nir", "write_nir", "read_nir")
  from ml_collections import ConfigDict
  from cfsnn_jax.models import build_model
  from cfsnn_jax.neuron import NeuronFactory, resolve_spec
  model = build_model(ConfigDict({"name": "mlp", "hidden": (8,)}),
                      NeuronFactory(resolve_spec("lif"), 3), input_shape=(4,), num_classes=3,
                      static_input=True, rngs=nnx.Rngs(0))  # NIR has binary neurons only
  model.eval()
  x = jnp.ones((2, 4))
  ours, _ = model(x)
  graph = export_nir(model)
  theirs, _ = import_nir(graph, 3)(x)
  np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
  path = str(tmp_path / "model.nir")
  write_nir(model, path)
  again, _ = read_nir(path)(x)
  np.testing.assert_allclose(again, ours, rtol=1e-5, atol=1e-5)


def _analysis(api: Face, trained, batches, workdir, tmp_path):
  (measure_energy, energy_markdown, trace_synaptic_ops, collect_spiking_stats,
   gradient_available_share, write_training_report, plot_training_curves,
   plot_firing_rates) = api("cfsnn_jax.analysis", "measure_energy", "energy_markdown",
                            "trace_synaptic_ops", "collect_spiking_stats",
                            "gradient_available_share", "write_training_report",
                            "plot_training_curves", "plot_firing_rates")
  model = trained.eval_model()
  report = measure_energy(model, batches[:1])
  assert report.energy_mj > 0 and "|" in energy_markdown(report)
  assert trace_synaptic_ops(model, jnp.asarray(batches[0]["image"]))
  stats = collect_spiking_stats(model, batches[:1])
  assert stats.rate_LT.ndim == 2 and len(stats.names) == stats.rate_LT.shape[0]
  spec = stats.specs[0]
  share = float(gradient_available_share(jnp.array([0.9, -20.0]), 1.0, spec.alpha, spec))
  assert 0.0 < share < 1.0
  out = write_training_report(trained.eval_graphdef, trained.state, batches[:1],
                              str(tmp_path / "report"), max_batches=1)
  assert out["energy_mj_per_image"] > 0
  assert os.path.isfile(plot_training_curves(workdir))
  assert os.path.isfile(plot_firing_rates(stats, str(tmp_path)))


def _backends(api: Face):
  (conv_general_dilated, reference_convolutions, checkpoint, after_cotangent,
   time_loop_unroll, backend_workarounds) = api(
      "cfsnn_jax.backends", "conv_general_dilated", "reference_convolutions", "checkpoint",
      "after_cotangent", "time_loop_unroll", "backend_workarounds")
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
  w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
  args = ((1, 1), "SAME")
  kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ref = jax.lax.conv_general_dilated(x, w, *args, **kw)
  np.testing.assert_allclose(conv_general_dilated(x, w, *args, **kw), ref, rtol=1e-5, atol=1e-5)
  with reference_convolutions():
    np.testing.assert_allclose(conv_general_dilated(x, w, *args, **kw), ref, rtol=1e-6)
  fn = lambda w: jnp.sum(jnp.tanh(x[0, 0] @ w[0, 0]))  # noqa: E731
  np.testing.assert_allclose(jax.grad(checkpoint(fn))(w), jax.grad(fn)(w), rtol=1e-5)
  np.testing.assert_array_equal(after_cotangent(x, jnp.ones(3)), x)
  assert isinstance(backend_workarounds(), bool)
  assert time_loop_unroll(4) in (True, 1) and time_loop_unroll(1000) == 1


def test_every_listed_name_runs_on_a_tiny_input(tmp_path):
  api = Face()
  run = _configs(api, tmp_path)
  spec = _neuron(api)
  factory, neuron_parameters = _layer(api, spec)
  _model(api, factory, neuron_parameters)
  splits, batches = _data(api, run)
  _training(api, run, splits, batches, tmp_path)
  trained, workdir = _run(api, run, tmp_path)
  _nir(api, tmp_path)
  _analysis(api, trained, batches, workdir, tmp_path)
  _backends(api)
  missing = set(listed_names()) - api.used
  assert not missing, f"listed in docs/API.md but not exercised here: {sorted(missing)}"


def test_notebooks_use_only_the_public_api():
  """Every cfsnn_jax name a notebook imports (or reads off an imported face) is listed."""
  import json
  listed = set(listed_names())
  faces = {face for face, _ in listed}
  notebooks = os.path.join(ROOT, "notebooks")
  checked = 0
  for f in sorted(os.listdir(notebooks)):
    if not f.endswith(".ipynb"):
      continue
    cells = json.load(open(os.path.join(notebooks, f)))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for module, names in re.findall(r"^\s*from (cfsnn_jax[\w.]*) import ([\w, ]+)", code, re.M):
      for item in names.split(","):
        name, _, alias = item.strip().partition(" as ")
        if module == "cfsnn_jax.configs":
          continue
        if module == "cfsnn_jax" and f"cfsnn_jax.{name}" in faces:  # a face bound to a name
          used = set(re.findall(rf"\b{alias or name}\.(\w+)", code))
          assert used and {(f"cfsnn_jax.{name}", u) for u in used} <= listed, (f, used)
        else:
          assert (module, name) in listed, (f, module, name)
        checked += 1
  assert checked >= 8
