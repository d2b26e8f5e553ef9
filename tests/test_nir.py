"""NIR export / import: round trip through a NIR file gives the same outputs, the graph
type-checks with the ``nir`` package, refused neurons say which primitive is missing, and
(when snnTorch is installed) an independent NIR consumer computes the same spikes."""

import functools

import numpy as np
import jax.numpy as jnp
import pytest
from flax import nnx

nir = pytest.importorskip("nir")

from cfsnn_jax.neuron import equations as neurons  # noqa: E402
from cfsnn_jax.errors import UserError  # noqa: E402
from cfsnn_jax.interop import nir as cnir  # noqa: E402
from cfsnn_jax.neuron.layers import NeuronFactory  # noqa: E402
from cfsnn_jax.models.convnet import SpikingConvNet  # noqa: E402
from cfsnn_jax.models.mlp import SpikingMLP  # noqa: E402
from cfsnn_jax.models.resnet import SpikingResNet  # noqa: E402

T = 3


def _factory(preset, **kw):
  return NeuronFactory(neurons.resolve_spec(preset, threshold=0.5, **kw), T)


def _randomize(model, seed=1):
  """Non-trivial BN statistics and affine parameters, PLIF decays away from the init."""
  rng = np.random.default_rng(seed)
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.BatchNorm):
      c = m.mean.shape[0]
      m.mean[...] = jnp.asarray(rng.normal(0, 0.1, c), jnp.float32)
      m.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
      m.scale[...] = jnp.asarray(rng.uniform(0.8, 1.6, c), jnp.float32)
      m.bias[...] = jnp.asarray(rng.normal(0.2, 0.2, c), jnp.float32)
    if getattr(m, "decay_logit", None) is not None:
      m.decay_logit[...] = jnp.asarray(rng.normal(0, 1), jnp.float32)
  model.eval()
  return model


MODELS = {
    "mlp_if": (lambda f: SpikingMLP(input_shape=(8, 8, 1), num_classes=5, hidden=(16, 12),
                                    neuron=f, rngs=nnx.Rngs(0)), (8, 8, 1), "if"),
    "convnet_lif": (lambda f: SpikingConvNet(input_shape=(8, 8, 2), num_classes=5,
                                             channels=(4, 6), hidden=10, neuron=f,
                                             rngs=nnx.Rngs(0)), (8, 8, 2), "lif"),
    "resnet_standard_plif": (lambda f: SpikingResNet(
        input_shape=(8, 8, 3), num_classes=5, neuron=f, stage_blocks=(1, 2), widths=(4, 8),
        strides=(1, 2), head_hidden=6, residual="standard", rngs=nnx.Rngs(0)), (8, 8, 3),
        "plif"),
    "resnet_sew_lif_decay_input": (lambda f: SpikingResNet(
        input_shape=(8, 8, 3), num_classes=5, neuron=f, stage_blocks=(1, 2), widths=(4, 8),
        strides=(1, 2), residual="sew_add", rngs=nnx.Rngs(0)), (8, 8, 3), "lif"),
    # issue 26: strided 3x3 convolutions padded (1, 1) as torch's (stem and block), and the
    # DS-ATGO code's head FC -> BN -> neuron -> FC (bias-free) with SEW-ADD and a wide stem
    "resnet_strided_stem_lif": (lambda f: SpikingResNet(
        input_shape=(16, 16, 3), num_classes=5, neuron=f, stage_blocks=(1, 1), widths=(4, 8),
        strides=(1, 2), stem_stride=2, head_hidden=6, rngs=nnx.Rngs(0)), (16, 16, 3), "lif"),
    "resnet_dsatgo_head_plif": (lambda f: SpikingResNet(
        input_shape=(8, 8, 3), num_classes=5, neuron=f, stage_blocks=(1, 1), widths=(8, 16),
        strides=(1, 2), stem_width=8, head_hidden=6, head_form="bn", residual="sew_add",
        rngs=nnx.Rngs(0)), (8, 8, 3), "plif"),
}


@functools.lru_cache(maxsize=None)  # built once per module: exporting does not change them
def _build(key):
  make, shape, preset = MODELS[key]
  kw = {"decay_input": True} if "decay_input" in key else {}
  return _randomize(make(_factory(preset, **kw))), shape


def _input(shape, seed=2, batch=4):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 2, (batch,) + shape), jnp.float32)


@pytest.mark.parametrize("key", list(MODELS))
def test_round_trip_through_a_nir_file_gives_the_same_outputs(key, tmp_path):
  model, shape = _build(key)
  path = str(tmp_path / f"{key}.nir")
  graph = cnir.write_nir(model, path, shape)
  # The nir package validates: the graph type-checks (shapes along every edge) on reading.
  read = nir.read(path)
  nir.NIRGraph(nodes=read.nodes, edges=read.edges, metadata=read.metadata, type_check=True)
  assert set(read.nodes) == set(graph.nodes) and sorted(read.edges) == sorted(graph.edges)
  kinds = {type(n).__name__ for n in read.nodes.values()}
  assert {"Input", "Output", "Affine"} <= kinds and kinds & {"IF", "LIF"}
  assert "BatchNorm" not in " ".join(read.nodes)  # folded into the conv / affine before it
  imported = cnir.read_nir(path)  # num_steps from the file's metadata
  assert imported.num_steps == T
  x = _input(shape)
  logits, aux = model(x)
  logits2, aux2 = imported(x)
  np.testing.assert_allclose(np.asarray(logits2), np.asarray(logits), rtol=1e-5, atol=1e-5)
  rates = np.sort(np.asarray(aux.rate_T).mean(1))
  np.testing.assert_allclose(np.sort(np.asarray(aux2.rate_T).mean(1)), rates, atol=1e-6)
  assert 0 < rates.mean() < 1  # some neurons fire, not all: the comparison means something


def test_residual_adds_are_edges_into_one_node():
  model, shape = _build("resnet_standard_plif")
  graph = cnir.export_nir(model, shape)
  into = lambda n: sorted(a for a, b in graph.edges if b == n)  # noqa: E731
  assert into("blocks.0.neuron2") == ["blocks.0.conv2", "stem_neuron"]  # identity shortcut
  assert into("blocks.1.neuron2") == ["blocks.1.conv2", "blocks.1.down_conv"]
  sew, _ = _build("resnet_sew_lif_decay_input")
  g2 = cnir.export_nir(sew, shape)
  assert sorted(a for a, b in g2.edges if b == "blocks.2.conv1") == ["blocks.1.down_neuron",
                                                                      "blocks.1.neuron2"]


def test_strided_convolutions_export_their_symmetric_padding():
  """torch's ``padding=1`` at stride 2 is NIR's ``padding=(1, 1)``; the 1x1 shortcut has none."""
  model, shape = _build("resnet_strided_stem_lif")
  nodes = cnir.export_nir(model, shape).nodes
  for name, stride, pad in [("stem_conv", 2, 1), ("blocks.0.conv1", 1, 1),
                            ("blocks.1.conv1", 2, 1), ("blocks.1.down_conv", 2, 0)]:
    assert tuple(np.ravel(nodes[name].stride)) == (stride, stride), name
    assert tuple(np.ravel(nodes[name].padding)) == (pad, pad), name
  assert tuple(nodes["blocks.1.conv1"].output_type["output"]) == (8, 4, 4)  # 8x8 -> 4x4


def test_dsatgo_head_batchnorm_folds_into_the_affine():
  """Eval-mode BatchNorm1d after the bias-free FC is an affine map: the exported ``fc`` node
  is ``s * W x + (beta - mean * s)``, ``s = gamma / sqrt(var + eps)``; the head has no bias."""
  model, shape = _build("resnet_dsatgo_head_plif")
  nodes = cnir.export_nir(model, shape).nodes
  bn = model.fc_bn.bn
  s = np.asarray(bn.scale[...]) / np.sqrt(np.asarray(bn.var[...]) + bn.epsilon)
  np.testing.assert_allclose(nodes["fc"].weight, np.asarray(model.fc.kernel[...]).T * s[:, None],
                             rtol=1e-6)
  np.testing.assert_allclose(nodes["fc"].bias, np.asarray(bn.bias[...])
                             - np.asarray(bn.mean[...]) * s, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(nodes["head"].bias, 0.0)
  assert not [n for n in nodes if "bn" in n]


def test_flax_same_padding_at_stride_2_is_refused_with_one_line():
  """flax's SAME pads a stride-2 3x3 convolution of an even input by (0, 1); NIR pads
  symmetrically, so such a model is refused, naming the convolution; at stride 1 flax's
  SAME is the symmetric padding and exports."""
  make = lambda strides: _randomize(SpikingResNet(  # noqa: E731
      input_shape=(8, 8, 3), num_classes=5, neuron=_factory("lif"), stage_blocks=(1, 1),
      widths=(4, 8), strides=strides, conv_padding="flax_same", rngs=nnx.Rngs(0)))
  with pytest.raises(UserError, match=r"blocks\.1\.conv1 to NIR: asymmetric padding "
                                      r"\[\(0, 1\), \(0, 1\)\]") as info:
    cnir.export_nir(make((1, 2)), (8, 8, 3))
  assert "\n" not in str(info.value)
  nodes = cnir.export_nir(make((1, 1)), (8, 8, 3)).nodes
  assert tuple(np.ravel(nodes["blocks.1.conv1"].padding)) == (1, 1)


def test_neuron_parameters_follow_the_documented_discretisation():
  model, shape = _build("resnet_standard_plif")
  graph = cnir.export_nir(model, shape)
  lif = graph.nodes["stem_neuron"]
  lam = float(model.stem_neuron.decay())
  np.testing.assert_allclose(lif.tau, 1.0 / (1.0 - lam), rtol=1e-6)  # dt = 1
  np.testing.assert_allclose(lif.r, lif.tau, rtol=1e-6)  # c = 1: r = tau / dt
  np.testing.assert_allclose(lif.v_threshold, 0.5)
  np.testing.assert_allclose(lif.v_leak, 0.0)
  assert lif.tau.shape == (4, 8, 8)  # one value per neuron, CHW
  mlp, mshape = _build("mlp_if")
  node = cnir.export_nir(mlp, mshape).nodes["neurons.0"]
  assert isinstance(node, nir.IF) and np.allclose(node.r, 1.0)
  dec, dshape = _build("resnet_sew_lif_decay_input")
  node = cnir.export_nir(dec, dshape).nodes["stem_neuron"]
  np.testing.assert_allclose(node.r, 1.0, rtol=1e-6)  # decay_input: c = 1 - lambda


@pytest.mark.parametrize("preset, missing", [
    ("cf", "multi-spike"), ("cf_signed", "multi-spike"), ("dsatgo", "adaptive-threshold"),
])
def test_refused_neurons_name_the_missing_primitive(preset, missing):
  model = SpikingMLP(input_shape=(8,), num_classes=3, hidden=(4,),
                     neuron=NeuronFactory(neurons.resolve_spec(preset), T), rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match=missing) as info:
    cnir.export_nir(model)
  assert "\n" not in str(info.value) and "neurons.0" in str(info.value)
  signed = NeuronFactory(neurons.resolve_spec("lif", signed=True), T)
  with pytest.raises(UserError, match="signed-spike"):
    cnir.export_nir(SpikingMLP(input_shape=(8,), num_classes=3, hidden=(4,), neuron=signed,
                               rngs=nnx.Rngs(0)))
  soft = NeuronFactory(neurons.resolve_spec("lif", reset="soft"), T)
  with pytest.raises(UserError, match="subtractive-reset"):
    cnir.export_nir(SpikingMLP(input_shape=(8,), num_classes=3, hidden=(4,), neuron=soft,
                               rngs=nnx.Rngs(0)))


def test_import_refuses_what_does_not_map():
  w = np.ones((3, 3), np.float32)
  graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])),
                              "a": nir.Affine(weight=w, bias=np.zeros(3, np.float32)),
                              "n": nir.CubaLIF(tau_syn=np.ones(3), tau_mem=np.ones(3) * 2,
                                               r=np.ones(3), v_leak=np.zeros(3),
                                               v_threshold=np.ones(3)),
                              "output": nir.Output(np.array([3]))},
                       edges=[("input", "a"), ("a", "n"), ("n", "output")])
  with pytest.raises(UserError, match="CubaLIF"):
    cnir.import_nir(graph, T)
  uneven = nir.LIF(tau=np.array([2.0, 3.0, 2.0]), r=np.ones(3) * 2, v_leak=np.zeros(3),
                   v_threshold=np.ones(3))
  graph.nodes["n"] = uneven
  with pytest.raises(UserError, match="tau varies"):
    cnir.import_nir(graph, T)


def test_independent_consumer_snntorch_computes_the_same_outputs():
  """snnTorch's NIR importer (nirtorch graph executor, CPU torch): same logits per step.
  Its importer assumes dt = 1e-4, so we export with that dt (tau and r scale, the discrete
  dynamics do not). Optional: skipped when snntorch / torch are not installed."""
  torch = pytest.importorskip("torch")
  snntorch_nir = pytest.importorskip("snntorch.import_nir")
  factory = _factory("lif")
  model = _randomize(SpikingMLP(input_shape=(16,), num_classes=5, hidden=(12, 10),
                                neuron=factory, rngs=nnx.Rngs(0)))
  net = snntorch_nir.import_from_nir(cnir.export_nir(model, dt=1e-4))
  x = _input((16,))
  logits, aux = model(x)
  assert 0 < float(np.asarray(aux.rate_T).mean()) < 1
  with torch.no_grad():  # snnTorch's neurons keep their membrane between calls (one step each)
    outs = [net(torch.tensor(np.asarray(x)))[0].numpy() for _ in range(T)]
  np.testing.assert_allclose(np.stack(outs), np.asarray(logits), rtol=1e-5, atol=1e-5)
