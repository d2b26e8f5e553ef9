"""Bad NIR input is one ``UserError`` line naming the file or the node and what was expected,
raised by ``read_nir`` / ``import_nir`` (never at the first call): damaged or foreign files,
and graphs our layers cannot run (shapes that do not chain, unfed nodes, ...)."""

import os

import h5py
import numpy as np
import pytest

nir = pytest.importorskip("nir")

from cfsnn_jax.errors import UserError  # noqa: E402
from cfsnn_jax.interop import nir as cnir  # noqa: E402

T = 2


def _lif(n, **kw):
  p = dict(tau=np.full(n, 2.0), r=np.full(n, 2.0), v_leak=np.zeros(n), v_threshold=np.ones(n),
           v_reset=np.zeros(n))
  p.update(kw)
  return nir.LIF(**p)


def _affine(n_out, n_in, bias=None):
  return nir.Affine(weight=np.ones((n_out, n_in), np.float32),
                    bias=np.zeros(n_out, np.float32) if bias is None else bias)


def _chain(*named, edges=None, inp=(4,)):
  """A graph Input -> nodes... -> Output (type check off: these graphs are meant to be bad)."""
  nodes = {"input": nir.Input(np.array(inp))}
  nodes.update(named)
  nodes["output"] = nir.Output(np.array([], np.int64))  # undeclared: its input decides
  names = list(nodes)
  if edges is None:
    edges = list(zip(names[:-1], names[1:]))
  return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _conv(c_out=2, c_in=1, k=3, **kw):
  p = dict(input_shape=None, weight=np.ones((c_out, c_in, k, k), np.float32), stride=1,
           padding=0, dilation=1, groups=1, bias=np.zeros(c_out, np.float32))
  p.update(kw)
  return nir.Conv2d(**p)


def _pool(k=2, s=2, p=0):
  return nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))


_flat = {"f": nir.Flatten(input_type={"input": None}, start_dim=0)}

# (id, graph builder, text the one line must contain)
GRAPHS = [
    ("unfed node", lambda: _chain(("a", _affine(4, 4)), ("n", _lif(4)), ("b", _affine(3, 4)),
                                  edges=[("input", "a"), ("a", "n"), ("b", "output")]),
     "'b': no incoming edge"),
    ("affine shapes do not chain", lambda: _chain(("a", _affine(5, 4)), ("b", _affine(3, 4))),
     "'b': Affine weight [3, 4] takes 4 features, its input has shape [5]"),
    ("affine on an image", lambda: _chain(("a", _affine(3, 16)), inp=(1, 4, 4)),
     "'a': Affine weight [3, 16] takes 16 features, its input has shape [1, 4, 4]; a Flatten"),
    ("affine bias size", lambda: _chain(("a", _affine(3, 4, bias=np.zeros(2))),),
     "'a': Affine bias of shape [2] for 3 outputs"),
    ("linear weight 3-D", lambda: _chain(("a", nir.Linear(weight=np.ones((2, 3, 4)))),),
     "'a': Linear weight must be [out, in]"),
    ("edge to a missing node", lambda: _chain(("a", _affine(4, 4)),
                                              edges=[("input", "a"), ("a", "outptu"),
                                                     ("a", "output")]),
     "edge ('a', 'outptu') names a node that is not in the graph"),
    ("duplicate edge", lambda: _chain(("a", _affine(4, 4)),
                                      edges=[("input", "a"), ("input", "a"), ("a", "output")]),
     "edge ('input', 'a') is listed twice"),
    ("cycle", lambda: _chain(("a", _affine(4, 4)), ("b", _affine(4, 4)),
                             edges=[("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")]),
     "recurrent NIR graph"),
    ("no output", lambda: nir.NIRGraph(nodes={"input": nir.Input(np.array([4])),
                                              "a": _affine(4, 4)},
                                       edges=[("input", "a")], type_check=False),
     "1 Input and 0 Output nodes"),
    ("input with an incoming edge", lambda: _chain(("a", _affine(4, 4)),
                                                   edges=[("input", "a"), ("a", "output"),
                                                          ("a", "input")]),
     "'input': an Input node has incoming edges"),
    ("unknown node type", lambda: _chain(("d", nir.Delay(delay=np.ones(4))),),
     "'d': type Delay has no cfsnn_jax counterpart"),
    ("CubaLIF", lambda: _chain(("n", nir.CubaLIF(tau_syn=np.ones(4), tau_mem=np.full(4, 2.),
                                                 r=np.ones(4), v_leak=np.zeros(4),
                                                 v_threshold=np.ones(4))),),
     "'n': type CubaLIF has no cfsnn_jax counterpart"),
    ("inputs of different shapes", lambda: _chain(
        ("a", _affine(4, 4)), ("b", _affine(3, 4)), ("n", _lif(4)),
        edges=[("input", "a"), ("input", "b"), ("a", "n"), ("b", "n"), ("n", "output")]),
     "'n': its inputs have shapes [[4], [3]]"),
    ("output shape declared wrong", lambda: nir.NIRGraph(
        nodes={"input": nir.Input(np.array([4])), "a": _affine(3, 4),
               "output": nir.Output(np.array([5]))},
        edges=[("input", "a"), ("a", "output")], type_check=False),
     "'output': Output declares shape [5], its input is [3]"),
    ("lif parameter shape", lambda: _chain(("n", _lif(3)),), "'n': r of shape [3] for [4]"),
    ("lif threshold varies", lambda: _chain(("n", _lif(4, v_threshold=np.arange(1., 5.))),),
     "'n': v_threshold varies across neurons"),
    ("lif tau below dt", lambda: _chain(("n", _lif(4, tau=np.full(4, 1e-4))),),
     "'n': tau/dt = 0.0001 < 1"),
    ("lif v_leak", lambda: _chain(("n", _lif(4, v_leak=np.ones(4))),), "'n': v_leak != 0"),
    ("lif r zero", lambda: _chain(("n", _lif(4, r=np.zeros(4))),), "'n': r must be positive"),
    ("lif NaN", lambda: _chain(("n", _lif(4, v_threshold=np.full(4, np.nan))),),
     "'n': v_threshold must be a finite number"),
    ("conv on a flat input", lambda: _chain(("c", _conv()),), "'c': Conv2d expects a CHW"),
    ("conv channels", lambda: _chain(("c", _conv(c_in=3)), inp=(1, 6, 6)),
     "'c': Conv2d weight [2, 3, 3, 3] with groups=1 does not take 1 input channels"),
    ("conv kernel larger than input", lambda: _chain(("c", _conv(k=5)), inp=(1, 3, 3)),
     "'c': kernel [5, 5] does not fit the input [1, 3, 3]"),
    ("conv declared input_shape", lambda: _chain(("c", _conv(input_shape=(5, 5))),
                                                 inp=(1, 6, 6)),
     "'c': input_shape [5, 5] but its input is [1, 6, 6]"),
    ("conv same with stride 2", lambda: _chain(("c", _conv(padding="same", stride=2)),
                                               inp=(1, 6, 6)),
     "'c': padding 'same' with stride > 1"),
    ("conv stride of three values", lambda: _chain(("c", _conv(stride=np.array([1, 1, 1]))),
                                                   inp=(1, 6, 6)),
     "'c': stride must be an integer >= 1 or an (H, W) pair"),
    ("conv weight 3-D", lambda: _chain(("c", nir.Conv2d(
        input_shape=None, weight=np.ones((2, 1, 3)), stride=1, padding=0, dilation=1,
        groups=1, bias=np.zeros(2))), inp=(1, 6, 6)),
     "'c': Conv2d weight must be [C_out, C_in, kh, kw]"),
    ("pool kernel not an integer", lambda: _chain(("p", _pool(k=2.5)), inp=(1, 4, 4)),
     "'p': kernel_size must be an integer >= 1"),
    ("pool zero stride", lambda: _chain(("p", _pool(s=0)), inp=(1, 4, 4)),
     "'p': stride must be an integer >= 1"),
    ("pool kernel larger than input", lambda: _chain(("p", _pool(k=5)), inp=(1, 4, 4)),
     "'p': kernel [5, 5] does not fit the input [1, 4, 4]"),
    ("pool on a flat input", lambda: _chain(("p", _pool()),), "'p': AvgPool2d expects a CHW"),
    ("flatten dims out of range", lambda: _chain(
        ("f", nir.Flatten(input_type={"input": None}, start_dim=3)), inp=(1, 4, 4)),
     "'f': Flatten start_dim=3, end_dim=-1 do not fit its input of shape [1, 4, 4]"),
    ("scale shape", lambda: _chain(("s", nir.Scale(scale=np.ones(3))),),
     "'s': Scale of shape [3] on an input of shape [4]"),
    ("input shape", lambda: _chain(("a", _affine(4, 4)), inp=(0,)),
     "'input': Input shape must be positive integers"),
]


def _assert_one_line(info, *parts):
  msg = str(info.value)
  assert "\n" not in msg, msg
  for part in parts:
    assert part in msg, msg


@pytest.mark.parametrize("build, expected", [g[1:] for g in GRAPHS],
                         ids=[g[0] for g in GRAPHS])
def test_bad_graph_is_one_line_at_import(build, expected):
  graph = build()
  with pytest.raises(UserError) as info:
    cnir.import_nir(graph, T)
  _assert_one_line(info, "cannot import" if "edge" not in expected else "", expected)


@pytest.mark.parametrize("build, expected", [g[1:] for g in GRAPHS[:3]],
                         ids=[g[0] for g in GRAPHS[:3]])
def test_bad_graph_in_a_file_names_the_file_and_the_node(build, expected, tmp_path):
  path = str(tmp_path / "bad.nir")
  nir.write(path, build())
  with pytest.raises(UserError) as info:
    cnir.read_nir(path, T)
  _assert_one_line(info, path, expected)


def test_import_refuses_what_is_not_a_graph_or_a_step_count():
  with pytest.raises(UserError, match="takes a nir.NIRGraph, got str .read_nir reads a file"):
    cnir.import_nir("model.nir", T)
  good = _chain(("a", _affine(4, 4)),)
  for steps in (0, -1, 2.5, None):
    with pytest.raises(UserError, match="num_steps must be a positive integer"):
      cnir.import_nir(good, steps)
  with pytest.raises(UserError, match="dt must be a positive number"):
    cnir.import_nir(good, T, dt=0.0)
  with pytest.raises(UserError, match="neuron_overrides: 'surogate' is not a NeuronSpec field"):
    cnir.import_nir(_chain(("n", _lif(4)),), T, neuron_overrides={"surogate": "atan"})
  cnir.import_nir(good, T)  # the same graph, well called, imports


def _good_file(tmp_path) -> str:
  path = str(tmp_path / "good.nir")
  graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([4])), "a": _affine(3, 4),
                              "n": _lif(3), "output": nir.Output(np.array([3]))},
                       edges=[("input", "a"), ("a", "n"), ("n", "output")],
                       metadata={"num_steps": T})
  nir.write(path, graph)
  return path


def _text(tmp_path):
  p = tmp_path / "model.nir"
  p.write_text("this is not a NIR graph\n")
  return str(p)


def _empty(tmp_path):
  p = tmp_path / "model.nir"
  p.write_bytes(b"")
  return str(p)


def _truncated(tmp_path):
  good = _good_file(tmp_path)
  data = open(good, "rb").read()
  p = tmp_path / "truncated.nir"
  p.write_bytes(data[:len(data) // 2])
  return str(p)


def _foreign_hdf5(tmp_path):
  p = str(tmp_path / "weights.h5")
  with h5py.File(p, "w") as f:
    f["dense/kernel"] = np.ones((3, 3))
  return p


def _no_nodes(tmp_path):
  p = str(tmp_path / "model.nir")
  with h5py.File(p, "w") as f:
    f.create_group("node")["type"] = b"NIRGraph"
  return p


def _edit(tmp_path, fn):
  path = _good_file(tmp_path)
  with h5py.File(path, "r+") as f:
    fn(f["node"])
  return path


def _unknown_type(tmp_path):
  def fn(g):
    del g["nodes/a/type"]
    g["nodes/a/type"] = b"Affine2"
  return _edit(tmp_path, fn)


def _missing_field(tmp_path):
  return _edit(tmp_path, lambda g: g["nodes/a"].__delitem__("bias"))


def _no_type(tmp_path):
  return _edit(tmp_path, lambda g: g["nodes/n"].__delitem__("type"))


def _no_edges(tmp_path):
  return _edit(tmp_path, lambda g: g.__delitem__("edges"))


def _nan_weight(tmp_path):
  def fn(g):
    del g["nodes/a/weight"]
    g["nodes/a/weight"] = np.full((3, 4), np.nan)
  return _edit(tmp_path, fn)


def _negative_dt(tmp_path):
  return _edit(tmp_path, lambda g: g["metadata"].create_dataset("dt", data=-1.0))


def _affine_file(tmp_path):
  path = str(tmp_path / "chain.nir")
  nir.write(path, _chain(("a", _affine(5, 4)), ("b", _affine(3, 4))))
  return path


# (id, file maker, num_steps, text the one line must contain besides the path)
FILES = [
    ("missing path", lambda tmp: str(tmp / "nope.nir"), T, "no such NIR file"),
    ("directory", lambda tmp: str(tmp), T, "is a directory, expected a NIR file"),
    ("text file", _text, T, "not a NIR file: expected HDF5 (written by nir.write), found other"),
    ("empty file", _empty, T, "not a NIR file: expected HDF5 (written by nir.write), found an "
     "empty file"),
    ("truncated file", _truncated, T, "not a readable NIR file"),
    ("HDF5 that is not NIR", _foreign_hdf5, T, "an HDF5 file but not NIR (no 'node' group"),
    ("NIR group without nodes", _no_nodes, T, "not a NIR graph file (the root has no 'nodes'"),
    ("unknown node type string", _unknown_type, T, "node 'a' has type 'Affine2', which NIR"),
    ("node without a type", _no_type, T, "node 'n' has type None"),
    ("node missing a field", _missing_field, T, "not a readable NIR file"),
    ("no edges", _no_edges, T, "not a readable NIR file (AssertionError: The incoming"),
    ("NaN weights", _nan_weight, T, "'a': weight must be a finite number or array, got "
     "array([[nan, nan"),
    ("negative dt in the metadata", _negative_dt, T, "dt must be a positive number, got -1 "
     "(the graph's metadata['dt'])"),
    ("affine shapes do not chain", _affine_file, T, "'b': Affine weight [3, 4] takes 4"),
    ("no num_steps", _affine_file, None, "no num_steps in the NIR metadata; pass num_steps="),
]


@pytest.mark.parametrize("make, steps, expected", [f[1:] for f in FILES],
                         ids=[f[0] for f in FILES])
def test_bad_file_is_one_line_naming_the_file(make, steps, expected, tmp_path):
  path = make(tmp_path)
  with pytest.raises(UserError) as info:
    cnir.read_nir(path, steps)
  _assert_one_line(info, path, expected)


def test_the_good_file_the_bad_ones_are_made_from_reads(tmp_path):
  net = cnir.read_nir(_good_file(tmp_path))
  assert net.num_steps == T and os.path.exists(tmp_path / "good.nir")
