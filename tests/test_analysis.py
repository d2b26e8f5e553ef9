"""Analysis tests: energy (METHOD.md §7) against hand counts, MACs of ResNet-19 against an
independent formula, spiking statistics on inputs with known answers, and the report files."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfsnn_jax.neuron import layers, equations as neurons
from cfsnn_jax.analysis import energy, plots, report, spiking_stats
from cfsnn_jax.models import resnet, transformer, vgg
from cfsnn_jax.models.mlp import SpikingMLP


def _phi(z):
  return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _set(linear: nnx.Linear, kernel) -> None:
  linear.kernel[...] = jnp.asarray(kernel, jnp.float32)


class TwoLayer(nnx.Module):
  """Linear(4->3) encoder (runs once, repeated over T) -> neuron -> Linear(3->2)."""

  def __init__(self, spec: neurons.NeuronSpec, num_steps: int):
    self.num_steps = num_steps
    self.static_input = True
    self.enc = nnx.Linear(4, 3, use_bias=False, rngs=nnx.Rngs(0))
    self.sn = layers.SpikingNeuron(spec, num_steps)
    self.out = nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(1))
    _set(self.enc, np.eye(4, 3))  # currents = the first three inputs

  def __call__(self, x_BD):
    cur = self.enc(x_BD)
    s, _ = self.sn(jnp.broadcast_to(cur[None], (self.num_steps,) + cur.shape))
    return self.out(s)


def _fixed(name: str, **kw) -> neurons.NeuronSpec:
  return neurons.resolve_spec(name, surrogate_mode="fixed", **kw)


def test_energy_of_two_layer_model_matches_hand_computation():
  # IF, hard reset, threshold 1, currents [1.5, 0.2, 2.5]: spikes [1, 0, 1] at both steps.
  model = TwoLayer(_fixed("if"), num_steps=2)
  x = np.array([[1.5, 0.2, 2.5, 7.0], [9.0, 9.0, 9.0, 9.0]], np.float32)
  batch = {"image": x, "mask": np.array([1.0, 0.0], np.float32)}  # second row is padding
  rep = energy.measure_energy(model, [batch])
  enc, out = rep.rows
  assert (enc.name, enc.encoder, enc.macs, enc.steps, enc.rate) == ("enc", True, 12, 1, None)
  assert (out.name, out.encoder, out.macs, out.steps) == ("out", False, 6, 2)
  np.testing.assert_allclose(out.rate, 4 / 6, rtol=1e-6)
  np.testing.assert_allclose(out.sops, 8.0, rtol=1e-6)  # 4 spikes x fan-out 2
  np.testing.assert_allclose(rep.energy_mj, (4.6 * 12 + 0.9 * 8) * 1e-9, rtol=1e-6)
  assert rep.num_examples == 1


@pytest.mark.parametrize("preset,currents", [("cf", [1.5, 2.5, 0.2]),
                                             ("cf_signed", [1.5, -2.5, 0.2])])
def test_energy_counts_multilevel_and_signed_spikes(preset, currents):
  # IF charge, soft reset, D = 4: currents 1.5 -> counts 1, 2; 2.5 -> 2, 3; 0.2 -> 0, 0.
  model = TwoLayer(_fixed(preset, charge="if"), num_steps=2)
  x = np.array([currents + [0.0]], np.float32)
  s_TB, _ = model.sn(jnp.broadcast_to(model.enc(jnp.asarray(x))[None], (2, 1, 3)))
  expected = [[1, -2 if preset == "cf_signed" else 2, 0], [2, -3 if preset == "cf_signed"
                                                           else 3, 0]]
  np.testing.assert_array_equal(np.asarray(s_TB)[:, 0], expected)
  rep = energy.measure_energy(model, [x])
  np.testing.assert_allclose(rep.rows[1].rate, 8 / 6, rtol=1e-6)  # |S| summed: 1+2+2+3
  np.testing.assert_allclose(rep.rows[1].sops, 16.0, rtol=1e-6)
  np.testing.assert_allclose(rep.energy_mj, (4.6 * 12 + 0.9 * 16) * 1e-9, rtol=1e-6)


class SpikeProduct(nnx.Module):
  """Two spiking layers multiplied with each other (as in spiking self-attention)."""

  def __init__(self, spec, num_steps):
    self.num_steps = num_steps
    self.static_input = True
    self.a = nnx.Linear(2, 3, use_bias=False, rngs=nnx.Rngs(0))
    self.b = nnx.Linear(2, 3, use_bias=False, rngs=nnx.Rngs(1))
    self.sa = layers.SpikingNeuron(spec, num_steps)
    self.sb = layers.SpikingNeuron(spec, num_steps)

  def __call__(self, x):
    rep = lambda c: jnp.broadcast_to(c[None], (self.num_steps,) + c.shape)
    qa, _ = self.sa(rep(self.a(x)))
    qb, _ = self.sb(rep(self.b(x)))
    return jnp.einsum("tbi,tbj->tbij", qa, qb).sum((-1, -2)) + jnp.einsum("tbi,tbi->tb", qa, qb)


def test_activation_products_count_unit_accumulations_exactly():
  model = SpikeProduct(_fixed("cf", charge="if"), num_steps=1)
  _set(model.a, [[1.0, 2.5, 0.0], [0.0, 0.0, 0.0]])  # qa = [1, 2, 0]
  _set(model.b, [[3.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # qb = [3, 0, 1]
  rep = energy.measure_energy(model, [np.array([[1.0, 0.0]], np.float32)])
  rows = {r.name: r for r in rep.rows}
  assert sorted(rows) == ["a", "b", "matmul0", "matmul1"]
  outer, inner = rows["matmul0"], rows["matmul1"]
  assert (outer.kind, outer.macs, inner.macs) == ("matmul", 9, 3)
  np.testing.assert_allclose(outer.sops, (1 + 2) * (3 + 1), rtol=1e-6)  # sum_ij |a_i||b_j|
  np.testing.assert_allclose(inner.sops, 1 * 3, rtol=1e-6)  # sum_i |a_i||b_i|
  np.testing.assert_allclose(outer.rate, 12 / 9, rtol=1e-6)


def _resnet19_macs_independent(h=32, w=32, c=3, classes=10):
  """sum over convs of H_out W_out k^2 C_in C_out + FC, from the architecture in METHOD §6
  (the DS-ATGO variant: stem 128)."""
  total, size, in_ch = h * w * 9 * c * 128, h, 128  # stem conv3x3 / 128
  for blocks, width, stride in zip((3, 3, 2), (128, 256, 512), (1, 2, 2)):
    for i in range(blocks):
      s = stride if i == 0 else 1
      size //= s
      total += size * size * 9 * in_ch * width + size * size * 9 * width * width
      if s != 1 or in_ch != width:
        total += size * size * in_ch * width  # 1x1 downsampling shortcut
      in_ch = width
  return total + 512 * 256 + 256 * classes


@pytest.mark.parametrize("residual", ["sew_add", "standard"])
def test_resnet19_macs_match_independent_count(residual):
  factory = layers.NeuronFactory(neurons.resolve_spec("dsatgo"), 2)
  model = nnx.eval_shape(lambda: resnet.resnet19(  # the DS-ATGO code's stem of 128
      input_shape=(32, 32, 3), num_classes=10, neuron=factory, residual=residual,
      stem_width=128, rngs=nnx.Rngs(0)))
  ops = energy.trace_synaptic_ops(model, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert sum(op.macs for op in ops) == _resnet19_macs_independent() == 2_285_373_952
  assert len(ops) == 19 + 2 and [op.kind for op in ops].count("conv") == 19
  assert ops[0].name == "stem_conv" and ops[0].encoder and ops[0].steps == 1
  assert not any(op.encoder for op in ops[1:]) and {op.steps for op in ops[1:]} == {2}
  assert ops[-1].name == "head" and ops[-1].macs == 256 * 10


@pytest.mark.parametrize("workarounds", ["on", "off"])
@pytest.mark.parametrize("remat", ["none", "neuron", "block", "block_full"])
def test_event_input_encoder_runs_every_step(remat, workarounds, monkeypatch):
  # every remat mode, with the CPU wrapper (a custom_vjp) and without (jax's remat2): the
  # checkpointed blocks are traced inline
  monkeypatch.setenv("CFSNN_BACKEND_WORKAROUNDS", workarounds)
  factory = layers.NeuronFactory(neurons.resolve_spec("lif"), 3)
  model = nnx.eval_shape(lambda: vgg.vggsnn(
      input_shape=(16, 16, 2), num_classes=4, neuron=factory, layout=(4, "A", 8, "A"),
      static_input=False, remat=remat, rngs=nnx.Rngs(0)))
  ops = energy.trace_synaptic_ops(model, jax.ShapeDtypeStruct((3, 2, 16, 16, 2), jnp.float32))
  assert [(op.name, op.encoder, op.steps, op.macs) for op in ops] == [
      ("convs.0", True, 3, 16 * 16 * 9 * 2 * 4), ("convs.1", False, 3, 8 * 8 * 9 * 4 * 8),
      ("head", False, 3, 4 * 4 * 8 * 4)]


def test_spikformer_attention_products_are_found():
  factory = layers.NeuronFactory(neurons.resolve_spec("lif"), 2)
  model = nnx.eval_shape(lambda: transformer.Spikformer(
      input_shape=(8, 8, 3), num_classes=3, neuron=factory, embed_dim=16, depth=1,
      num_heads=2, rngs=nnx.Rngs(0)))
  ops = energy.trace_synaptic_ops(model, jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32))
  matmuls = [op for op in ops if op.kind == "matmul"]
  # 4 tokens, 2 heads of width 8: N <= d, so (Q K^T) V, each product H * N * N * d MACs.
  assert [op.name for op in matmuls] == ["blocks.0.attn.matmul0", "blocks.0.attn.matmul1"]
  assert [op.macs for op in matmuls] == [2 * 4 * 4 * 8, 2 * 4 * 4 * 8]


class Chain(nnx.Module):
  """Encoder -> neuron ``z_first`` -> Linear -> neuron ``a_second`` (names sort backwards)."""

  def __init__(self, spec, num_steps):
    self.num_steps = num_steps
    self.static_input = True
    self.enc = nnx.Linear(3, 3, use_bias=False, rngs=nnx.Rngs(0))
    self.z_first = layers.SpikingNeuron(spec, num_steps)
    self.mid = nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(1))
    self.a_second = layers.SpikingNeuron(spec, num_steps)
    _set(self.enc, np.eye(3))
    _set(self.mid, [[1.0, 0.0], [0.0, 0.5], [1.0, 0.0]])

  def __call__(self, x):
    cur = self.enc(x)
    s, _ = self.z_first(jnp.broadcast_to(cur[None], (self.num_steps,) + cur.shape))
    s, _ = self.a_second(self.mid(s))
    return s


def test_firing_rates_per_layer_and_step_on_known_inputs():
  # IF, hard reset: currents [1.5, 0.6, 2.5] -> spikes [1, 0, 1], [1, 1, 1];
  # second layer currents [2, 0], [2, 0.5] -> spikes [1, 0], [1, 0].
  model = Chain(_fixed("if"), num_steps=2)
  x = np.array([[1.5, 0.6, 2.5]], np.float32)
  stats = spiking_stats.collect_spiking_stats(model, [x, x], training=False)
  assert stats.names == ["z_first", "a_second"]  # forward order, not alphabetical
  np.testing.assert_allclose(stats.rate_LT, [[2 / 3, 1.0], [0.5, 0.5]], rtol=1e-6)
  np.testing.assert_allclose(stats.theta_LT, 1.0)
  assert stats.num_examples == 2
  rep = energy.measure_energy(model, [x])
  np.testing.assert_allclose(rep.rows[1].rate, 5 / 6, rtol=1e-6)  # input of mid


def test_forward_order_matches_model_aux_rows():
  factory = layers.NeuronFactory(neurons.resolve_spec("cf"), 2)
  model = resnet.resnet20(input_shape=(8, 8, 3), num_classes=3, neuron=factory,
                          stage_blocks=(1, 1), widths=(4, 8), strides=(1, 2),
                          residual="sew_add", rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
  stats = spiking_stats.collect_spiking_stats(model, [x])
  model.eval()
  _, aux = model(jnp.asarray(x))
  assert stats.names[0] == "stem_neuron" and stats.names[-1] == "blocks.1.down_neuron"
  np.testing.assert_allclose(stats.rate_LT, np.asarray(aux.rate_T), atol=1e-6)


def test_gradient_available_share_matches_closed_form():
  rng = np.random.default_rng(0)
  n = 400_000
  h = jnp.asarray(rng.normal(size=n), jnp.float32)
  spec = _fixed("lif", surrogate="rectangular", alpha=2.0)  # width 1 / alpha = 0.5
  theta, w = 0.7, 0.5
  expected = _phi(theta + w / 2) - _phi(theta - w / 2)
  tol = 4 * math.sqrt(expected * (1 - expected) / n)
  got = float(spiking_stats.gradient_available_share(h, theta, 2.0, spec))
  assert abs(got - expected) < tol
  # CF (D = 4) on U(-1, 3): intervals [k - 1/4, k + 1/4]; k = 1, 2 inside, k = 3 half, k = 4 out.
  u = jnp.asarray(rng.uniform(-1, 3, size=n), jnp.float32)
  spec_cf = _fixed("cf", surrogate="rectangular", alpha=2.0)
  got = float(spiking_stats.gradient_available_share(u, 1.0, 2.0, spec_cf))
  assert abs(got - 1.25 / 4) < 4 * math.sqrt(0.3125 * 0.6875 / n)


class Currents(nnx.Module):
  """Static input currents repeated over T into one neuron: H_0 = x exactly."""

  def __init__(self, spec, num_steps):
    self.num_steps = num_steps
    self.static_input = True
    self.sn = layers.SpikingNeuron(spec, num_steps)

  def __call__(self, x):
    s, _ = self.sn(jnp.broadcast_to(x[None], (self.num_steps,) + x.shape))
    return s


@pytest.mark.parametrize("sigma", [0.6, 1.5])
def test_dsatgo_gradient_available_share_closed_form(sigma):
  # Train mode, step 0: H = x ~ N(0, sigma^2); theta = mean + std; dynamic width from std.
  rng = np.random.default_rng(1)
  x = (sigma * rng.normal(size=(200, 1000))).astype(np.float32)
  model = Currents(neurons.resolve_spec("dsatgo"), num_steps=2)
  stats = spiking_stats.collect_spiking_stats(model, [x], training=True)
  mean, std = float(x.mean()), float(x.std(ddof=1))
  theta = mean + std
  width = float(neurons.dynamic_width(jnp.asarray(std), 1.0))
  np.testing.assert_allclose(stats.theta_LT[0, 0], theta, rtol=1e-5)
  np.testing.assert_allclose(stats.alpha_LT[0, 0], 1 / width, rtol=1e-5)
  expected = _phi((theta + width / 2) / sigma) - _phi((theta - width / 2) / sigma)
  assert abs(stats.grad_share_LT[0, 0] - expected) < 4 * math.sqrt(
      expected * (1 - expected) / x.size) + 2e-3
  np.testing.assert_allclose(stats.rate_LT[0, 0], np.mean(x >= theta), atol=1e-6)
  # Eval mode uses the EMA (initialised at the base threshold 1.0).
  stats_eval = spiking_stats.collect_spiking_stats(model, [x], training=False)
  np.testing.assert_allclose(stats_eval.theta_LT[0], 1.0)


def _tiny_mlp(neuron="cf", **kw):
  factory = layers.NeuronFactory(neurons.resolve_spec(neuron, **kw), 3)
  model = SpikingMLP(input_shape=(8,), num_classes=3, hidden=(6, 5), neuron=factory,
                     rngs=nnx.Rngs(0))
  model.eval()
  graphdef = nnx.graphdef(model)
  model.train()
  _, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, {"params": params, "rest": rest, "step": jnp.zeros((), jnp.int32)}


def _batches(n_batches=2, batch=6, d=8):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n_batches):
    out.append({"image": (2 * rng.normal(size=(batch, d))).astype(np.float32),
                "label": np.zeros(batch, np.int32), "mask": np.ones(batch, np.float32)})
  return out


def test_training_report_writes_every_file(tmp_workdir):
  graphdef, state = _tiny_mlp()
  model = nnx.merge(graphdef, state["params"], state["rest"])
  os.makedirs(tmp_workdir)
  with open(os.path.join(tmp_workdir, "metrics.jsonl"), "w") as f:
    for step, scale in ((10, 1.0), (20, 2.0)):
      scalars = {k: v * scale for k, v in spiking_stats.neuron_scalars(model).items()}
      f.write(json.dumps({"step": step, "split": "neurons", **scalars}) + "\n")
  summary = report.write_training_report(graphdef, state, _batches(), tmp_workdir)
  for name in ("firing_rates.png", "membrane_hist.png", "grad_available.png", "alphas.png",
               "energy.json", "energy.md", "analysis.json"):
    path = os.path.join(tmp_workdir, name)
    assert os.path.getsize(path) > 0, name
  with open(os.path.join(tmp_workdir, "analysis.json")) as f:
    analysis = json.load(f)
  assert analysis["eval"]["layers"] == ["neurons.0", "neurons.1"]
  assert np.asarray(analysis["eval"]["rate_LT"]).shape == (2, 3)
  assert analysis["history"]["source"] == "metrics"
  assert analysis["history"]["steps"] == [10, 20]
  np.testing.assert_allclose(analysis["history"]["alpha"]["neurons.1"], [[4.0] * 3, [8.0] * 3])
  assert summary["energy_mj_per_image"] == pytest.approx(
      json.load(open(os.path.join(tmp_workdir, "energy.json")))["energy_mj_per_image"])


def test_alpha_history_from_checkpoints(tmp_workdir):
  import grain
  from cfsnn_jax.training import checkpointing
  graphdef, state = _tiny_mlp()
  manager = checkpointing.make_manager(tmp_workdir, keep=3)
  data_iter = iter(grain.MapDataset.range(8).to_iter_dataset())
  for step, alpha in ((5, 3.0), (9, 6.0)):
    model = nnx.merge(graphdef, state["params"], state["rest"])
    for sn in model.neurons:
      sn.rho[...] = jnp.full((3,), neurons.rho_for_alpha(alpha))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    checkpointing.save(manager, step, dict(state, params=params, rest=rest), data_iter)
  manager.wait_until_finished()
  manager.close()
  hist = spiking_stats.neuron_history_from_checkpoints(tmp_workdir, graphdef, state)
  assert hist["source"] == "checkpoints" and hist["steps"] == [0, 5, 9]
  np.testing.assert_allclose(hist["alpha"]["neurons.0"], [[4.0] * 3, [3.0] * 3, [6.0] * 3],
                             rtol=1e-5)
  stats = spiking_stats.collect_spiking_stats(nnx.merge(graphdef, state["params"],
                                                        state["rest"]), _batches(1))
  path = plots.plot_alphas(stats, hist, tmp_workdir)
  assert os.path.getsize(path) > 0


def test_energy_cli_writes_table_for_fresh_parameters(tmp_workdir, capsys):
  from configs import default
  from cfsnn_jax.analysis import energy_cli
  assert energy_cli.main(default.get_config("tiny"), tmp_workdir, 1, 4.6, 0.9) == 0
  with open(os.path.join(tmp_workdir, "energy.json")) as f:
    table = json.load(f)
  assert [r["name"] for r in table["layers"]] == ["linears.0", "head"]
  assert table["layers"][0]["macs"] == 64 * 32 and table["layers"][0]["encoder"]
  assert "fresh parameters" in capsys.readouterr().out


def test_energy_cli_refuses_a_workdir_trained_with_another_config(tmp_workdir):
  # CF and LIF parameters have the same shapes: without the check the CF run would be
  # measured silently as a LIF model
  from configs import default
  from cfsnn_jax import errors
  from cfsnn_jax.training import workdir as workdir_lib, workdir
  from cfsnn_jax.analysis import energy_cli
  trained = default.get_config("tiny")
  path = workdir_lib.workdir_path(tmp_workdir)
  (path / "checkpoints" / "6").mkdir(parents=True)  # refused before any restore
  workdir.write_description(path, workdir.run_description(trained),
                            workdir.Status("fresh", path))
  asked = default.get_config("tiny")
  asked.neuron.name = "lif"
  with pytest.raises(errors.UserError, match=r"holds another run: neuron.name is \"cf\" there, "
                     r"\"lif\" here; pass the --config and overrides that run was trained"):
    energy_cli.main(asked, tmp_workdir, 1, 4.6, 0.9)
  assert not os.path.exists(os.path.join(tmp_workdir, "energy.json"))
  asked.neuron.name, asked.progress_bar = "cf", True  # a run-only field may differ
  asked.model.remat = "block"  # so may remat (memory only)
  energy_cli._check_same_run(asked, tmp_workdir)
