"""NIR graphs written by other frameworks import and give their producers' spikes, and every
form nir's type check accepts for our layers imports: scalar or per-axis pooling / conv
parameters, ``Linear`` and ``Affine``, ``Scale``, ``Flatten`` over any dims, IF / LIF with
scalar or per-neuron parameters.

The fixtures in tests/fixtures/nir/ were written by snnTorch's and sinabs' NIR exporters and
simulated by those frameworks (make_foreign_graphs.py regenerates them); the live test reruns
the producer when it is installed."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

nir = pytest.importorskip("nir")

from cfsnn_jax.interop import nir as cnir  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "nir")
sys.path.insert(0, FIXTURES)
import make_foreign_graphs as foreign  # noqa: E402

DT = {"snntorch": foreign.SNNTORCH_DT, "sinabs": 1.0}  # the Euler step each writer assumes


def _ours(graph_or_path, x_TBX, dt):
  """Our spikes for NIR-layout input [T, B, *shape] (CHW images go in as HWC)."""
  load = cnir.read_nir if isinstance(graph_or_path, str) else cnir.import_nir
  net = load(graph_or_path, num_steps=x_TBX.shape[0], static_input=False, dt=dt)
  x = np.transpose(x_TBX, (0, 1, 3, 4, 2)) if x_TBX.ndim == 5 else x_TBX
  out, aux = net(jnp.asarray(x))
  return np.asarray(out), aux


@pytest.mark.parametrize("framework", foreign.FRAMEWORKS)
@pytest.mark.parametrize("model", list(foreign.MODELS))
def test_foreign_fixture_imports_and_matches_its_producer(framework, model):
  base = os.path.join(FIXTURES, f"{framework}_{model}")
  data = np.load(base + ".npz")
  spikes, aux = _ours(base + ".nir", data["x_TBX"], DT[framework])
  want = data["spikes_TBK"]
  assert 0 < want.mean() < 1  # the producer's output has spikes and silences
  np.testing.assert_array_equal(spikes, want)
  rates = np.asarray(aux.rate_T)
  assert rates.shape == (2, data["x_TBX"].shape[0]) and 0 < rates.mean() < 1


@pytest.mark.parametrize("framework", foreign.FRAMEWORKS)
@pytest.mark.parametrize("model", list(foreign.MODELS))
def test_live_producer_matches_us(framework, model):
  """The producer exports and simulates now (other seeds than the fixtures'); skipped when
  the framework is not installed."""
  pytest.importorskip("torch")
  pytest.importorskip(framework)
  net, graph = foreign.build(framework, model, seed=5)
  x = foreign.example_input(model, seed=6)
  want = foreign.simulate(framework, net, x)
  assert 0 < want.mean() < 1
  spikes, _ = _ours(graph, x, DT[framework])
  np.testing.assert_array_equal(spikes, want)


# --- accepted forms, each against an independent reference --------------------------------


def _graph(nodes: dict, inp, edges=None, path=None):
  """Input -> nodes (in order) -> Output; written and read back when ``path`` is given (nir
  reads scalars back as 0-d arrays, what broke pooling before; only an uncompressed file can
  hold a scalar)."""
  all_nodes = {"input": nir.Input(np.array(inp)), **nodes,
               "output": nir.Output(np.array([], np.int64))}
  names = list(all_nodes)
  graph = nir.NIRGraph(nodes=all_nodes, edges=edges or list(zip(names[:-1], names[1:])),
                       type_check=False)
  if path is None:
    return graph
  nir.write(path, graph, compression=None)
  return cnir.read_graph(path)


def _run(graph, x_BX, steps=2):
  x = np.transpose(x_BX, (0, 2, 3, 1)) if x_BX.ndim == 4 else x_BX
  out, _ = cnir.import_nir(graph, steps)(jnp.asarray(x, jnp.float32))
  out = np.asarray(out)
  return np.transpose(out, (0, 1, 4, 2, 3)) if out.ndim == 5 else out  # back to CHW


def _x(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_issue_minimal_case_scalar_avg_pool(tmp_path):
  """Input [1, 4, 4] -> AvgPool2d(kernel_size=2, stride=2, padding=0) -> Output [1, 2, 2]."""
  pool = nir.AvgPool2d(kernel_size=np.array(2), stride=np.array(2), padding=np.array(0))
  graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([1, 4, 4])), "pool": pool,
                              "output": nir.Output(np.array([1, 2, 2]))},
                       edges=[("input", "pool"), ("pool", "output")], type_check=False)
  out, _ = cnir.import_nir(graph, 3)(jnp.ones((1, 4, 4, 1)))
  np.testing.assert_array_equal(np.asarray(out), np.ones((3, 1, 2, 2, 1)))
  x = _x((2, 1, 4, 4))
  want = x.reshape(2, 1, 2, 2, 2, 2).mean((3, 5))
  np.testing.assert_allclose(_run(graph, x)[0], want, rtol=1e-6)
  read = _graph({"pool": pool}, [1, 4, 4], path=str(tmp_path / "p.nir"))
  assert np.shape(read.nodes["pool"].kernel_size) == ()  # a scalar in the file too
  np.testing.assert_allclose(_run(read, x)[0], want, rtol=1e-6)


@pytest.mark.parametrize("kind", ["AvgPool2d", "SumPool2d"])
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 1, 1), ((2, 3), (1, 2), (1, 0))])
def test_pooling_scalar_or_per_axis_matches_a_reference(kind, k, s, p, tmp_path):
  x = _x((2, 3, 6, 7))
  node = getattr(nir, kind)(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))
  k2, s2, p2 = (np.broadcast_to(v, 2).tolist() for v in (k, s, p))
  ref = jax.lax.reduce_window(jnp.asarray(x), 0.0, jax.lax.add, (1, 1, *k2), (1, 1, *s2),
                              ((0, 0), (0, 0), (p2[0], p2[0]), (p2[1], p2[1])))
  ref = np.asarray(ref) / (1 if kind == "SumPool2d" else np.prod(k2))  # counts the padding
  for graph in (_graph({"p": node}, [3, 6, 7]),
                _graph({"p": node}, [3, 6, 7], path=str(tmp_path / "p.nir"))):
    np.testing.assert_allclose(_run(graph, x)[0], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride, padding, dilation, groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), ((1, 2), (2, 0), (2, 1), 1), (1, "same", 2, 1),
    (1, "valid", 1, 1), (1, 1, 1, 2)])
def test_conv_scalar_or_per_axis_matches_lax_in_nchw(stride, padding, dilation, groups,
                                                      tmp_path):
  x = _x((2, 4, 7, 6))
  w = _x((6, 4 // groups, 3, 3), seed=1)
  b = _x((6,), seed=2)
  node = nir.Conv2d(input_shape=None, weight=w, stride=stride, padding=padding,
                    dilation=dilation, groups=groups, bias=b)
  s2, d2 = (tuple(np.broadcast_to(v, 2).tolist()) for v in (stride, dilation))
  if isinstance(padding, str):
    pads = "SAME" if padding == "same" else "VALID"
  else:
    pads = [(v, v) for v in np.broadcast_to(padding, 2).tolist()]
  ref = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(w), s2, pads,
                                     rhs_dilation=d2, feature_group_count=groups,
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
  ref = np.asarray(ref) + b[:, None, None]
  written = nir.Conv2d(input_shape=(7, 6), weight=w, stride=stride, padding=padding,
                       dilation=dilation, groups=groups, bias=b)  # nir.write needs the shape
  for graph in (_graph({"c": node}, [4, 7, 6]),
                _graph({"c": written}, [4, 7, 6], path=str(tmp_path / "c.nir"))):
    np.testing.assert_allclose(_run(graph, x)[0], ref, rtol=1e-4, atol=1e-4)


def test_linear_and_affine_and_scale():
  w, b, s = _x((3, 5), 1), _x((3,), 2), _x((3,), 3)
  x = _x((4, 5))
  affine = _graph({"a": nir.Affine(weight=w, bias=b), "s": nir.Scale(scale=s)}, [5])
  np.testing.assert_allclose(_run(affine, x)[0], (x @ w.T + b) * s, rtol=1e-5, atol=1e-5)
  linear = _graph({"a": nir.Linear(weight=w), "s": nir.Scale(scale=np.array(2.0))}, [5])
  np.testing.assert_allclose(_run(linear, x)[0], 2 * (x @ w.T), rtol=1e-5, atol=1e-5)
  per_channel = _x((3, 1, 1), 4)  # a CHW scale broadcast over H, W
  img = _x((2, 3, 4, 4))
  scaled = _run(_graph({"s": nir.Scale(scale=per_channel)}, [3, 4, 4]), img)[0]
  np.testing.assert_allclose(scaled, img * per_channel, rtol=1e-6)


@pytest.mark.parametrize("dims", [[(0, -1)], [(1, -1), (0, -1)], [(-2, -1), (0, 1)],
                                  [(0, 1), (0, 1)], [(2, 2), (-3, 2)]])
def test_flatten_over_any_dims_matches_numpy_on_chw(dims):
  """Flatten's dims exclude the batch and count NIR's CHW layout (we hold HWC inside)."""
  x = _x((2, 3, 4, 5))
  nodes = {f"f{i}": nir.Flatten(input_type={"input": None}, start_dim=s, end_dim=e)
           for i, (s, e) in enumerate(dims)}
  want = x
  for s, e in dims:
    shape = want.shape[1:]
    s2, e2 = s % len(shape), e % len(shape)
    want = want.reshape((2,) + shape[:s2] + (-1,) + shape[e2 + 1:])
  nodes["a"] = nir.Affine(weight=_x((2, 60), 5), bias=np.zeros(2, np.float32))
  if want.ndim != 2:  # end on a flat vector either way, so the order of elements counts
    nodes["g"] = nir.Flatten(input_type={"input": None}, start_dim=0)
    nodes = {k: nodes[k] for k in [*list(nodes)[:-2], "g", "a"]}
    want = want.reshape(2, -1)
  out = _run(_graph(nodes, [3, 4, 5]), x)[0]
  np.testing.assert_allclose(out, want @ nodes["a"].weight.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["IF", "LIF"])
def test_neurons_with_scalar_or_per_neuron_parameters_agree(kind, tmp_path):
  n = 6

  def node(shape):
    full = lambda v: np.full(shape, v)  # noqa: E731
    if kind == "IF":
      return nir.IF(r=full(1.5), v_threshold=full(0.7), v_reset=full(0.0))
    return nir.LIF(tau=full(4.0), r=full(4.0), v_leak=full(0.0), v_threshold=full(0.7),
                   v_reset=full(0.0))

  x = _x((3, n), 7) + 0.4
  per_neuron = _run(_graph({"n": node((n,))}, [n]), x, steps=6)
  scalar = _run(_graph({"n": node(())}, [n], path=str(tmp_path / "s.nir")), x, steps=6)
  one = _run(_graph({"n": node((1,))}, [n]), x, steps=6)
  assert 0 < per_neuron.mean() < 1
  np.testing.assert_array_equal(scalar, per_neuron)
  np.testing.assert_array_equal(one, per_neuron)
  # and the documented discretisation, stepped by hand (dt = 1)
  v, want = np.zeros_like(x), []
  for _ in range(6):
    v = v + 1.5 * x if kind == "IF" else 0.75 * v + x
    s = v >= 0.7
    want.append(s.astype(np.float32))
    v = np.where(s, 0.0, v)
  np.testing.assert_array_equal(per_neuron, np.stack(want))
