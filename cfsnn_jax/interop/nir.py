"""NIR (Neuromorphic Intermediate Representation) export and import of spiking networks.

Contract:
- ``export_nir(model) -> nir.NIRGraph``: a trained (or fresh) ``SpikingMLP``,
  ``SpikingConvNet`` or ``SpikingResNet`` (``standard`` or ``sew_add`` residuals) in eval
  mode, as NIR 1.0 nodes: ``Input`` (CHW, the image fed at every step), ``Conv2d`` /
  ``Affine`` with BatchNorm (running statistics) folded in (also the ``head_form="bn"``
  head's BN after its bias-free FC), ``AvgPool2d``, ``Flatten``,
  ``IF`` / ``LIF`` neurons, residual adds as several edges into one node (NIR sums a node's
  inputs), ``Output`` (the logits per step). The graph is type-checked by ``nir`` itself.
- ``import_nir(graph, num_steps) -> NIRNetwork``: an NNX model of our layers (``nnx.Conv``,
  ``nnx.Linear``, ``SpikingNeuron``) that runs a NIR graph of those primitives; same
  ``__call__`` contract as our models (static ``[B, H, W, C]`` or events ``[T, B, H, W, C]``
  -> ``(logits_TBK, aux[L, T])``), so training, analysis and energy code run on it. It takes
  what other frameworks write: scalar or per-axis conv / pooling parameters, ``Linear`` /
  ``Affine``, ``Scale``, ``Flatten`` over any dims, IF / LIF with scalar or per-neuron
  parameters. Every node's shape and parameters are checked here, before a layer is built:
  what our layers cannot run is one ``UserError`` line naming the node.
- ``write_nir(model, path)`` / ``read_nir(path, num_steps)``: the same through a NIR file;
  ``read_graph(path)`` is the reading alone (a missing, non-HDF5, truncated or non-NIR file,
  or an unknown node type, is one ``UserError`` line naming the file).

Discretisation (NIR neurons are continuous-time; we run Euler steps of ``dt = 1``, stored as
``metadata["dt"]``). Our charge ``H_t = lambda U_{t-1} + c x_t`` (``c = 1``, or ``1 - lambda``
with ``decay_input``) is NIR's ``LIF`` ``tau dv/dt = (v_leak - v) + r I`` under Euler with
``tau = dt / (1 - lambda)``, ``r = c tau / dt``, ``v_leak = 0``; IF (``lambda = 1``) is NIR's
``IF`` ``dv/dt = r I`` with ``r = c / dt``. PLIF exports its learned ``lambda = sigmoid(w)``
as a LIF of that ``tau``. The threshold and hard reset map one to one (``v_threshold = theta``,
``v_reset``). We fire at ``H >= theta``, NIR at ``v > theta``: they differ only on the
measure-zero set ``H = theta``. Import inverts the mapping (a uniform ``r`` is absorbed by
scaling ``v_threshold`` and ``v_reset`` by ``dt / (r tau)``, which gives the same spikes).

What NIR cannot carry (refused with one ``UserError`` line naming the missing primitive):
multi-level CF spikes (``levels > 1``: no graded-spike neuron), signed / ternary spikes, soft
(subtractive) reset (NIR's IF / LIF reset to ``v_reset``), DS-ATGO's adaptive per-step
threshold, per-step BatchNorm (TEBN: weights that change with t), asymmetric padding (a
strided convolution of a ``conv_padding="flax_same"`` model), max pooling, the ANN twin
(ReLU), Spikformer / text models (no attention, embedding or matmul-of-activations
primitives). Backward-only settings (surrogate family, learnable ``rho`` of LSG, DS-ATGO's
dynamic width) have no forward meaning and are recorded in ``metadata`` only.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfsnn_jax.neuron import equations as neurons
from cfsnn_jax.errors import UserError
from cfsnn_jax.neuron.layers import NeuronFactory, SpikingNeuron, collect_aux, fold, unfold
from cfsnn_jax.models.common import TimeBatchNorm

DT = 1.0  # one time step of ours = one Euler step of dt in NIR's continuous-time neurons


def _nir():
  try:
    import nir
  except ImportError as e:  # an optional extra
    raise UserError("NIR export/import needs the `nir` package: pip install "
                    "'cfsnn_jax[nir]'") from e
  return nir


# --------------------------------------------------------------------------------------------
# Export.
# --------------------------------------------------------------------------------------------


def check_exportable(spec: neurons.NeuronSpec, where: str) -> None:
  """Raises ``UserError`` (one line) if NIR has no primitive for the neuron ``spec``."""
  problem = None
  if spec.activation != "spike":
    problem = "the ANN twin (ReLU) is not a spiking neuron"
  elif spec.levels > 1:
    problem = (f"multi-level circulate-firing (levels={spec.levels}): NIR has no graded / "
               "multi-spike neuron primitive")
  elif spec.signed:
    problem = "signed (ternary) spikes: NIR has no signed-spike neuron primitive"
  elif spec.adaptive:
    problem = ("the DS-ATGO adaptive threshold: NIR's IF/LIF have a constant v_threshold, "
               "there is no adaptive-threshold primitive")
  elif spec.reset != "hard":
    problem = ("soft (subtractive) reset: NIR's IF/LIF reset to v_reset, there is no "
               "subtractive-reset primitive")
  if problem:
    raise UserError(f"cannot export {where} to NIR: {problem}")


def _neuron_node(sn: SpikingNeuron, shape: tuple[int, ...], where: str, dt: float = DT):
  nir = _nir()
  spec = sn.spec
  check_exportable(spec, where)
  ones = np.ones(shape, np.float32)
  theta, v_reset = spec.threshold * ones, spec.v_reset * ones
  lam = float(np.asarray(sn.decay(), np.float64))
  if spec.charge == "if":
    return nir.IF(r=ones / dt, v_threshold=theta, v_reset=v_reset)
  if not 0.0 <= lam < 1.0:
    raise UserError(f"cannot export {where} to NIR: decay {lam} is not in [0, 1)")
  tau = dt / (1.0 - lam)
  c = (1.0 - lam) if spec.decay_input else 1.0
  return nir.LIF(tau=(tau * ones).astype(np.float64), r=(c * tau / dt * ones),
                 v_leak=0.0 * ones, v_threshold=theta, v_reset=v_reset)


def _bn_fold(bn: TimeBatchNorm | None, out_features: int, where: str):
  """(scale [C], shift [C]) of an eval-mode BatchNorm, or (1, 0)."""
  if bn is None:
    return np.ones(out_features), np.zeros(out_features)
  if bn.per_step:
    raise UserError(f"cannot export {where} to NIR: per-step BatchNorm (TEBN) changes the "
                    "weights at each time step; NIR's Conv2d/Affine are time-invariant")
  b = bn.bn
  var = np.asarray(b.var[...], np.float64)
  mean = np.asarray(b.mean[...], np.float64)
  gamma = np.asarray(b.scale[...], np.float64) if b.scale is not None else 1.0
  beta = np.asarray(b.bias[...], np.float64) if b.bias is not None else 0.0
  s = gamma / np.sqrt(var + b.epsilon)
  return s, beta - mean * s


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
  out = -(-size // stride)
  total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
  return total // 2, total - total // 2


def _conv_pads(conv: nnx.Conv, hw: tuple[int, int], where: str) -> list[tuple[int, int]]:
  k = conv.kernel.shape[:2]
  strides = _pair(conv.strides)
  dil = _pair(conv.kernel_dilation)
  p = conv.padding
  if isinstance(p, str):
    if p.upper() == "VALID":
      return [(0, 0), (0, 0)]
    if p.upper() == "SAME":
      return [_same_pads(hw[i], k[i], strides[i], dil[i]) for i in range(2)]
    raise UserError(f"cannot export {where} to NIR: padding {p!r} has no NIR form")
  if isinstance(p, int):
    return [(p, p), (p, p)]
  return [(int(a), int(b)) for a, b in (q if isinstance(q, (tuple, list)) else (q, q)
                                         for q in p)]


def _pair(v) -> tuple[int, int]:
  if v is None:
    return (1, 1)
  return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)


class _Exporter:
  """Builds the node dict and edge list; a *value* is the list of node names whose outputs
  sum to it (NIR sums every edge into a node), so residual adds need no extra node."""

  def __init__(self, dt: float = DT):
    self.dt = dt
    self.nodes: dict[str, Any] = {}
    self.edges: list[tuple[str, str]] = []

  def add(self, name: str, node, inputs: Sequence[str]) -> list[str]:
    self.nodes[name] = node
    self.edges += [(src, name) for src in inputs]
    return [name]

  def conv(self, name, conv: nnx.Conv, bn, x: list[str], chw: tuple[int, int, int]):
    nir = _nir()
    if conv.feature_group_count != 1 or _pair(conv.input_dilation) != (1, 1):
      raise UserError(f"cannot export {name} to NIR: grouped or input-dilated convolution")
    w = np.asarray(conv.kernel[...], np.float64)  # [kh, kw, in, out]
    c_out = w.shape[-1]
    bias = (np.asarray(conv.bias[...], np.float64) if conv.bias is not None
            else np.zeros(c_out))
    s, shift = _bn_fold(bn, c_out, name)
    w = w * s
    bias = bias * s + shift
    pads = _conv_pads(conv, chw[1:], name)
    w_oihw = np.transpose(w, (3, 2, 0, 1))
    if any(lo != hi for lo, hi in pads):  # NIR's padding is one number per side pair
      raise UserError(f"cannot export {name} to NIR: asymmetric padding {pads} (a model built "
                      f"with conv_padding='flax_same' and stride 2; NIR pads symmetrically)")
    dil = _pair(conv.kernel_dilation)
    padding = (pads[0][0], pads[1][0])
    strides = _pair(conv.strides)
    node = nir.Conv2d(input_shape=tuple(int(v) for v in chw[1:]),
                      weight=w_oihw.astype(np.float32), stride=strides, padding=padding,
                      dilation=dil, groups=1, bias=bias.astype(np.float32))
    out_hw = tuple(int(v) for v in node.output_type["output"][1:])
    return self.add(name, node, x), (c_out,) + out_hw

  def affine(self, name, lin: nnx.Linear, bn, x: list[str], column_order=None):
    nir = _nir()
    w = np.asarray(lin.kernel[...], np.float64).T  # [out, in]
    if column_order is not None:
      w = w[:, column_order]
    bias = (np.asarray(lin.bias[...], np.float64) if lin.bias is not None
            else np.zeros(w.shape[0]))
    s, shift = _bn_fold(bn, w.shape[0], name)
    node = nir.Affine(weight=(w * s[:, None]).astype(np.float32),
                      bias=(bias * s + shift).astype(np.float32))
    return self.add(name, node, x), (w.shape[0],)

  def neuron(self, name, sn, x, shape):
    return self.add(name, _neuron_node(sn, tuple(shape), name, self.dt), x)

  def flatten(self, name, x, chw):
    return self.add(name, _nir().Flatten(input_type={"input": np.array(chw)}, start_dim=0),
                    x), (int(np.prod(chw)),)

  def avg_pool(self, name, x, chw, k: tuple[int, int]):
    nir = _nir()
    node = nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(k), padding=np.array((0, 0)))
    return self.add(name, node, x), (chw[0], chw[1] // k[0], chw[2] // k[1])


def _hwc_to_chw_columns(h: int, w: int, c: int) -> np.ndarray:
  """Column order that makes a weight over HWC-flattened input act on CHW-flattened input."""
  return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def _input(ex: _Exporter, input_shape: Sequence[int]):
  nir = _nir()
  shape = tuple(int(v) for v in input_shape)
  chw = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape
  return ex.add("input", nir.Input(input_type={"input": np.array(chw)}), []), chw


def _export_mlp(model, ex: _Exporter, input_shape):
  x, shape = _input(ex, input_shape)
  order = None
  if len(shape) == 3:
    x, _ = ex.flatten("flatten", x, shape)
    order = _hwc_to_chw_columns(shape[1], shape[2], shape[0])
  for i, (lin, bn, sn) in enumerate(zip(model.linears, model.norms, model.neurons)):
    x, shape = ex.affine(f"linears.{i}", lin, bn, x, order if i == 0 else None)
    x = ex.neuron(f"neurons.{i}", sn, x, shape)
  return ex.affine("head", model.head, None, x)


def _export_convnet(model, ex: _Exporter, input_shape):
  x, chw = _input(ex, input_shape)
  for i, (conv, bn, sn) in enumerate(zip(model.convs, model.norms, model.neurons)):
    x, chw = ex.conv(f"convs.{i}", conv, bn, x, chw)
    x = ex.neuron(f"neurons.{i}", sn, x, chw)
    x, chw = ex.avg_pool(f"pool.{i}", x, chw, (2, 2))
  x, _ = ex.flatten("flatten", x, chw)
  x, shape = ex.affine("fc", model.fc, model.fc_norm, x,
                       _hwc_to_chw_columns(chw[1], chw[2], chw[0]))
  x = ex.neuron("fc_neuron", model.fc_neuron, x, shape)
  return ex.affine("head", model.head, None, x)


def _export_resnet(model, ex: _Exporter, input_shape):
  if model.stem_pool:
    raise UserError("cannot export the resnet stem's max pool to NIR: NIR 1.0 has no "
                    "max-pooling primitive (only AvgPool2d / SumPool2d)")
  x, chw = _input(ex, input_shape)
  x, chw = ex.conv("stem_conv", model.stem_conv, model.stem_bn, x, chw)
  x = ex.neuron("stem_neuron", model.stem_neuron, x, chw)
  for b, block in enumerate(model.blocks):
    p = f"blocks.{b}"
    y, ychw = ex.conv(f"{p}.conv1", block.conv1, block.bn1, x, chw)
    y = ex.neuron(f"{p}.neuron1", block.neuron1, y, ychw)
    y, ychw = ex.conv(f"{p}.conv2", block.conv2, block.bn2, y, ychw)
    shortcut = x
    if block.down_conv is not None:
      shortcut, _ = ex.conv(f"{p}.down_conv", block.down_conv, block.down_bn, x, chw)
    if block.residual == "standard":  # neuron(BN(conv2) + shortcut): two edges into sn2
      x = ex.neuron(f"{p}.neuron2", block.neuron2, y + shortcut, ychw)
    else:  # sew_add: neuron(BN(conv2)) + shortcut: the sum is the pair of sources
      y = ex.neuron(f"{p}.neuron2", block.neuron2, y, ychw)
      if block.down_neuron is not None:
        shortcut = ex.neuron(f"{p}.down_neuron", block.down_neuron, shortcut, ychw)
      x = y + shortcut
    chw = ychw
  x, chw = ex.avg_pool("global_pool", x, chw, (chw[1], chw[2]))
  x, shape = ex.flatten("flatten", x, chw)
  if model.fc is not None:
    x, shape = ex.affine("fc", model.fc, model.fc_bn, x)
    x = ex.neuron("fc_neuron", model.fc_neuron, x, shape)
  return ex.affine("head", model.head, None, x)


def _metadata(model, dt: float) -> dict:
  specs = [m.spec for _, m in nnx.iter_modules(model) if isinstance(m, SpikingNeuron)]
  spec = specs[0] if specs else None
  return {"source": "cfsnn_jax", "dt": dt, "num_steps": int(model.num_steps),
          "input_layout": "CHW, the static image fed at every step",
          "fires_at": "H >= theta (NIR: v > theta)",
          "surrogate": "" if spec is None else f"{spec.surrogate}/{spec.surrogate_mode}"}


def export_nir(model: nnx.Module, input_shape: Sequence[int] | None = None, *,
               dt: float = DT) -> Any:
  """The model (its eval-mode function: BN running statistics) as a type-checked
  ``nir.NIRGraph``; see the module docstring for what maps and what is refused.
  ``input_shape``: one example's shape (HWC or flat), when the model does not record it.
  ``dt``: the Euler step one of our time steps stands for (snnTorch's importer assumes
  ``dt = 1e-4``; ``tau`` and ``r`` scale with it, the discrete dynamics do not change)."""
  from cfsnn_jax.models.convnet import SpikingConvNet
  from cfsnn_jax.models.mlp import SpikingMLP
  from cfsnn_jax.models.resnet import SpikingResNet
  nir = _nir()
  builders = {SpikingMLP: _export_mlp, SpikingConvNet: _export_convnet,
              SpikingResNet: _export_resnet}
  build = builders.get(type(model))
  if build is None:
    raise UserError(f"cannot export {type(model).__name__} to NIR: only the mlp, convnet and "
                    "resnet families map onto NIR primitives (no attention / embedding)")
  input_shape = (input_shape or getattr(model, "input_shape", None)
                 or _infer_input_shape(model))
  ex = _Exporter(dt)
  out, shape = build(model, ex, input_shape)
  ex.add("output", nir.Output(output_type={"output": np.array(shape)}), out)
  return nir.NIRGraph(nodes=ex.nodes, edges=ex.edges, metadata=_metadata(model, dt),
                      type_check=True)


def _infer_input_shape(model) -> tuple[int, ...]:
  if hasattr(model, "convs"):
    raise UserError("cannot export the convnet to NIR without its input shape: pass "
                    "input_shape=(H, W, C)")
  return (model.linears[0].in_features,)


def write_nir(model: nnx.Module, path: str, input_shape: Sequence[int] | None = None, *,
              dt: float = DT) -> Any:
  """``export_nir(model)`` written to ``path`` (HDF5, ``nir.write``); returns the graph."""
  graph = export_nir(model, input_shape, dt=dt)
  _nir().write(path, graph)
  return graph


# --------------------------------------------------------------------------------------------
# Import. A value whose NIR shape is CHW is held as [T, B, H, W, C] (our layers' layout), any
# other as [T, B, *shape]; ``_check_graph`` infers every node's NIR shape before any layer is
# built, so a malformed graph fails at import with one line naming the node.
# --------------------------------------------------------------------------------------------

SUPPORTED = ("Input, Output, Affine, Linear, Scale, Conv2d, AvgPool2d, SumPool2d, Flatten, "
             "Identity, IF, LIF")


def _bad(name: str, what: str) -> UserError:
  return UserError(f"cannot import NIR node {name!r}: {what}")


def _uniform(values, what: str, name: str) -> float:
  a = np.asarray(values, np.float64).ravel()
  if a.size == 0 or not np.allclose(a, a[0], rtol=1e-6, atol=0):
    raise _bad(name, f"{what} varies across neurons; our neurons have one value per layer")
  return float(a[0])


def _array(node, field: str, name: str) -> np.ndarray:
  value = getattr(node, field, None)
  try:
    a = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    a = None
  if value is None or a is None or a.dtype == object or not np.all(np.isfinite(a)):
    raise _bad(name, f"{field} must be a finite number or array, got "
               f"{' '.join(repr(value).split())[:60]}")
  return a


def _int_pair(value, field: str, name: str, low: int) -> tuple[int, int]:
  """A scalar or per-axis (H, W) integer parameter (NIR writers use both) as a pair."""
  a = np.ravel(np.asarray(value, dtype=object))
  if a.size == 1:
    a = np.repeat(a, 2)
  try:
    pair = tuple(int(v) for v in a) if a.size == 2 else None
    ok = pair is not None and all(float(v) == p for v, p in zip(a, pair))
  except (TypeError, ValueError):
    ok = False
  if not ok or min(pair) < low:
    raise _bad(name, f"{field} must be an integer >= {low} or an (H, W) pair of them, got "
               f"{np.asarray(value).tolist()!r}")
  return pair


def _neuron_spec(node, name: str, dt: float = DT) -> tuple[neurons.NeuronSpec, tuple[int, ...]]:
  nir = _nir()
  shape = tuple(int(v) for v in np.shape(node.v_threshold))
  theta = _uniform(_array(node, "v_threshold", name), "v_threshold", name)
  v_reset = _uniform(_array(node, "v_reset", name), "v_reset", name)
  r = _uniform(_array(node, "r", name), "r", name)
  if isinstance(node, nir.IF):
    c = r * dt  # H = U + c x  ->  divide by c: same spikes with H' = U' + x
    kw = dict(charge="if")
  else:
    if not np.allclose(_array(node, "v_leak", name), 0.0):
      raise _bad(name, "v_leak != 0 has no counterpart (our charge has no leak towards a "
                 "non-zero rest potential)")
    tau = _uniform(_array(node, "tau", name), "tau", name) / dt
    if tau < 1.0:
      raise _bad(name, f"tau/dt = {tau:g} < 1 makes the Euler decay negative: pass dt= the "
                 "step the graph was written for (snnTorch writes tau for dt=1e-4)")
    c = r / tau
    kw = dict(charge="lif", tau=tau)
  if c <= 0:
    raise _bad(name, f"r must be positive, got {r}")
  spec = neurons.NeuronSpec(levels=1, signed=False, reset="hard", threshold=theta / c,
                            v_reset=v_reset / c, **kw)
  return spec, shape


def _conv_geometry(node, name: str, chw: tuple[int, ...]):
  """(pads [(lo, hi)] * 2, strides, dilation, out CHW) of a NIR ``Conv2d`` on input ``chw``."""
  w = _array(node, "weight", name)
  if w.ndim != 4:
    raise _bad(name, f"Conv2d weight must be [C_out, C_in, kh, kw], got shape {w.shape}")
  groups = int(np.asarray(node.groups).ravel()[0]) if np.size(node.groups) == 1 else 0
  if len(chw) != 3:
    raise _bad(name, f"Conv2d expects a CHW input, gets shape {list(chw)}")
  if groups < 1 or chw[0] != w.shape[1] * groups or w.shape[0] % groups:
    raise _bad(name, f"Conv2d weight {list(w.shape)} with groups={node.groups} does not take "
               f"{chw[0]} input channels")
  strides = _int_pair(node.stride, "stride", name, 1)
  dil = _int_pair(node.dilation, "dilation", name, 1)
  k = w.shape[2:]
  pad = node.padding
  if isinstance(pad, bytes):
    pad = pad.decode()
  if isinstance(pad, str):
    if pad not in ("same", "valid"):
      raise _bad(name, f"padding must be 'same', 'valid' or integers, got {pad!r}")
    if pad == "same" and strides != (1, 1):
      raise _bad(name, "padding 'same' with stride > 1 has no defined output size in NIR")
    totals = [d * (kk - 1) if pad == "same" else 0 for d, kk in zip(dil, k)]
    pads = [(t // 2, t - t // 2) for t in totals]  # PyTorch's 'same': the extra one after
  else:
    pads = [(p, p) for p in _int_pair(pad, "padding", name, 0)]
  declared = getattr(node, "input_shape", None)
  if declared is not None and tuple(int(v) for v in np.ravel(declared)) != tuple(chw[1:]):
    raise _bad(name, f"input_shape {np.ravel(declared).tolist()} but its input is "
               f"{list(chw)} (CHW)")
  hw = tuple((chw[1 + i] + sum(pads[i]) - dil[i] * (k[i] - 1) - 1) // strides[i] + 1
             for i in range(2))
  if min(hw) < 1:
    raise _bad(name, f"kernel {list(k)} does not fit the input {list(chw)} (output {hw})")
  return pads, strides, dil, groups, (int(w.shape[0]),) + hw


def _pool_geometry(node, name: str, chw: tuple[int, ...]):
  if len(chw) != 3:
    raise _bad(name, f"{type(node).__name__} expects a CHW input, gets shape {list(chw)}")
  k = _int_pair(node.kernel_size, "kernel_size", name, 1)
  s = k if node.stride is None else _int_pair(node.stride, "stride", name, 1)
  p = _int_pair(0 if node.padding is None else node.padding, "padding", name, 0)
  hw = tuple((chw[1 + i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(2))
  if min(hw) < 1:
    raise _bad(name, f"kernel {list(k)} does not fit the input {list(chw)}")
  return (k, s, p), (chw[0],) + hw


def _flatten_shape(node, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """NIR's ``Flatten``: dims ``start_dim..end_dim`` of the per-example shape (no batch)."""
  rank = len(shape)
  try:
    start, end = int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim))
  except (TypeError, ValueError):
    raise _bad(name, f"start_dim / end_dim must be integers, got {node.start_dim!r}, "
               f"{node.end_dim!r}") from None
  s, e = start + rank * (start < 0), end + rank * (end < 0)
  if not 0 <= s <= e < rank:
    raise _bad(name, f"Flatten start_dim={start}, end_dim={end} do not fit its input of shape "
               f"{list(shape)} (NIR's dims exclude the batch)")
  return shape[:s] + (int(math.prod(shape[s:e + 1])),) + shape[e + 1:]


def _shape_of(node, name: str, ins: list[tuple[int, ...]]) -> tuple[tuple[int, ...], Any]:
  """(NIR output shape, static data) of ``node`` given its inputs' shapes; ``UserError`` for
  anything our layers cannot run."""
  nir = _nir()
  if isinstance(node, nir.Input):
    shape = np.ravel(np.asarray((node.input_type or {}).get("input"), dtype=object))
    if shape.size == 0 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in shape):
      raise _bad(name, f"Input shape must be positive integers, got {shape.tolist()!r}")
    return tuple(int(v) for v in shape), None
  if len({tuple(s) for s in ins}) > 1:
    raise _bad(name, f"its inputs have shapes {[list(s) for s in ins]}; NIR sums a node's "
               "inputs, so they must agree")
  x = ins[0]
  if isinstance(node, nir.Output):
    declared = (node.output_type or {}).get("output")
    if declared is not None and np.size(declared) and \
        tuple(int(v) for v in np.ravel(declared)) != x:
      raise _bad(name, f"Output declares shape {np.ravel(declared).tolist()}, its input is "
                 f"{list(x)}")
    return x, None
  if isinstance(node, (nir.Affine, nir.Linear)):
    w = _array(node, "weight", name)
    if w.ndim != 2:
      raise _bad(name, f"{type(node).__name__} weight must be [out, in], got shape {w.shape}")
    if x != (w.shape[1],):
      hint = "; a Flatten before it is missing" if math.prod(x) == w.shape[1] else ""
      raise _bad(name, f"{type(node).__name__} weight {list(w.shape)} takes {w.shape[1]} "
                 f"features, its input has shape {list(x)}{hint}")
    if isinstance(node, nir.Affine):
      b = _array(node, "bias", name)
      if b.size not in (1, w.shape[0]):
        raise _bad(name, f"Affine bias of shape {list(b.shape)} for {w.shape[0]} outputs")
    return (int(w.shape[0]),), None
  if isinstance(node, nir.Conv2d):
    *geometry, out = _conv_geometry(node, name, x)
    b = _array(node, "bias", name)
    if b.size not in (1, out[0]):
      raise _bad(name, f"Conv2d bias of shape {list(b.shape)} for {out[0]} channels")
    return out, tuple(geometry)
  if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
    static, out = _pool_geometry(node, name, x)
    return out, static
  if isinstance(node, nir.Flatten):
    return _flatten_shape(node, name, x), None
  if isinstance(node, nir.Scale):
    scale = _array(node, "scale", name)
    if not _broadcasts(scale.shape, x) or np.broadcast_shapes(scale.shape, x) != x:
      raise _bad(name, f"Scale of shape {list(scale.shape)} on an input of shape {list(x)}")
    return x, scale
  if isinstance(node, (nir.IF, nir.LIF)):
    for field in ("r", "v_threshold", "v_reset") + (("tau", "v_leak")
                                                    if isinstance(node, nir.LIF) else ()):
      a = _array(node, field, name)
      if not _broadcasts(a.shape, x) or np.broadcast_shapes(a.shape, x) != x:
        raise _bad(name, f"{field} of shape {list(a.shape)} for {list(x)} neurons (expected "
                   "one value, or one per neuron)")
    return x, None
  if type(node).__name__ == "Identity":
    return x, None
  raise _bad(name, f"type {type(node).__name__} has no cfsnn_jax counterpart (supported: "
             f"{SUPPORTED})")


def _broadcasts(a: tuple, b: tuple) -> bool:
  try:
    np.broadcast_shapes(a, b)
  except ValueError:
    return False
  return True


def _check_graph(graph):
  """(topological order, predecessors, NIR shape per node, static data per node), after
  checking the structure: one Input, one Output, every other node fed, no cycle."""
  nir = _nir()
  if not isinstance(graph, nir.NIRGraph):
    raise UserError(f"import_nir takes a nir.NIRGraph, got {type(graph).__name__} (read_nir "
                    "reads a file)")
  nodes = graph.nodes if isinstance(graph.nodes, dict) else None
  if not nodes:
    raise UserError("cannot import a NIR graph without nodes")
  if any(isinstance(n, nir.NIRGraph) for n in nodes.values()):
    raise UserError("cannot import nested NIR graphs (subgraph nodes); flatten them first")
  for name, node in nodes.items():
    if not isinstance(node, nir.NIRNode):
      raise _bad(name, f"{node!r:.60} is not a NIR node (supported: {SUPPORTED})")
  preds: dict[str, list[str]] = {n: [] for n in nodes}
  succ: dict[str, list[str]] = {n: [] for n in nodes}
  seen = set()
  for edge in graph.edges:
    if len(edge) != 2:
      raise UserError(f"NIR edge {edge!r} is not a (source, target) pair")
    a, b = edge
    if a not in nodes or b not in nodes:
      raise UserError(f"NIR edge ({a!r}, {b!r}) names a node that is not in the graph")
    if (a, b) in seen:
      raise UserError(f"NIR edge ({a!r}, {b!r}) is listed twice")
    seen.add((a, b))
    preds[b].append(a)
    succ[a].append(b)
  inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
  outputs = [n for n, v in nodes.items() if isinstance(v, nir.Output)]
  if len(inputs) != 1 or len(outputs) != 1:
    raise UserError(f"cannot import a NIR graph with {len(inputs)} Input and {len(outputs)} "
                    "Output nodes: our models have one of each")
  for n in nodes:
    if n in inputs and preds[n]:
      raise _bad(n, f"an Input node has incoming edges from {preds[n]}")
    if n not in inputs and not preds[n]:
      raise _bad(n, "no incoming edge: every node but the Input must be fed by another")
  indeg = {n: len(p) for n, p in preds.items()}
  ready = [n for n in nodes if indeg[n] == 0]
  order = []
  while ready:
    n = ready.pop(0)
    order.append(n)
    for m in succ[n]:
      indeg[m] -= 1
      if indeg[m] == 0:
        ready.append(m)
  if len(order) != len(nodes):
    raise UserError("cannot import a recurrent NIR graph (the edges have a cycle): our "
                    "models are feed-forward per step")
  shapes, statics = {}, {}
  for n in order:
    shapes[n], statics[n] = _shape_of(nodes[n], n, [shapes[p] for p in preds[n]])
  return order, preds, shapes, statics


def _held(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A per-neuron array over NIR's ``shape`` in our layout (CHW -> HWC)."""
  a = np.broadcast_to(a, shape) if a.ndim else a
  return np.transpose(a, (1, 2, 0)) if a.ndim == 3 else a


class _Affine(nnx.Module):
  def __init__(self, node, rngs):
    w = np.asarray(node.weight, np.float32)
    self.linear = nnx.Linear(w.shape[1], w.shape[0], use_bias=True, rngs=rngs)
    self.linear.kernel[...] = jnp.asarray(w.T)
    b = getattr(node, "bias", None)
    self.linear.bias[...] = jnp.zeros(w.shape[0]) if b is None else jnp.asarray(
        np.broadcast_to(np.asarray(b, np.float32).ravel(), (w.shape[0],)))

  def __call__(self, x_N):
    return self.linear(x_N)


class _Conv(nnx.Module):
  def __init__(self, node, geometry, rngs):
    pads, strides, dil, groups = geometry
    w = np.asarray(node.weight, np.float32)  # [out, in / groups, kh, kw]
    self.conv = nnx.Conv(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]),
                         strides=strides, padding=pads, kernel_dilation=dil,
                         feature_group_count=groups, use_bias=True, rngs=rngs)
    self.conv.kernel[...] = jnp.asarray(np.transpose(w, (2, 3, 1, 0)))
    self.conv.bias[...] = jnp.asarray(np.broadcast_to(
        np.asarray(node.bias, np.float32).ravel(), (w.shape[0],)))

  def __call__(self, x_NHWC):
    return self.conv(x_NHWC)


class NIRNetwork(nnx.Module):
  """A NIR graph run by our layers, in NIR's topological order (see ``import_nir``)."""

  def __init__(self, graph, num_steps: int, *, static_input: bool = True,
               neuron_overrides: dict | None = None, dt: float | None = None,
               rngs: nnx.Rngs | None = None):
    nir = _nir()
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
        or num_steps < 1:
      raise UserError(f"num_steps must be a positive integer, got {num_steps!r}")
    rngs = rngs or nnx.Rngs(0)
    self.num_steps = int(num_steps)
    order, preds, shapes, statics = _check_graph(graph)
    unknown = sorted(set(neuron_overrides or {}) - set(neurons.NeuronSpec.__dataclass_fields__))
    if unknown:
      raise UserError(f"neuron_overrides: {unknown[0]!r} is not a NeuronSpec field (fields: "
                      f"{', '.join(neurons.NeuronSpec.__dataclass_fields__)})")
    meta_dt = (graph.metadata or {}).get("dt", DT) if isinstance(graph.metadata, dict) else DT
    try:
      self.dt = float(np.asarray(dt if dt is not None else meta_dt))
    except (TypeError, ValueError):
      self.dt = float("nan")
    if not self.dt > 0:
      raise UserError(f"dt must be a positive number, got {self.dt:g}"
                      + ("" if dt is not None else " (the graph's metadata['dt'])"))
    self.static_input = static_input
    self.order, self.preds = order, preds
    self.kinds: dict[str, str] = {}
    self.statics: dict[str, Any] = {}
    layers, layer_index, scales = [], {}, []
    for name in order:
      node = graph.nodes[name]
      if isinstance(node, nir.Input):
        self.input_name = name
        shape = shapes[name]
        self.input_shape = (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape
        self.kinds[name] = "input"
      elif isinstance(node, nir.Output):
        self.output_name = name
        self.kinds[name] = "output"
      elif isinstance(node, (nir.Affine, nir.Linear)):
        layer_index[name] = len(layers)
        layers.append(_Affine(node, rngs))
        self.kinds[name] = "affine"
      elif isinstance(node, nir.Conv2d):
        layer_index[name] = len(layers)
        layers.append(_Conv(node, statics[name], rngs))
        self.kinds[name] = "conv"
      elif isinstance(node, (nir.IF, nir.LIF)):
        spec, _ = _neuron_spec(node, name, self.dt)
        if neuron_overrides:
          spec = neurons.NeuronSpec(**{**spec.__dict__, **neuron_overrides})
        layer_index[name] = len(layers)
        layers.append(NeuronFactory(spec, self.num_steps)())
        self.kinds[name] = "neuron"
      elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        self.statics[name] = statics[name]
        self.kinds[name] = "avg_pool" if isinstance(node, nir.AvgPool2d) else "sum_pool"
      elif isinstance(node, nir.Flatten):
        self.statics[name] = (len(shapes[preds[name][0]]), shapes[name])
        self.kinds[name] = "flatten"
      elif isinstance(node, nir.Scale):
        layer_index[name] = len(scales)  # a constant, not a parameter: no optimiser moves it
        scales.append(nnx.Variable(jnp.asarray(_held(statics[name].astype(np.float32),
                                                      shapes[name]))))
        self.kinds[name] = "scale"
      else:  # Identity (anything else was refused by _check_graph)
        self.kinds[name] = "identity"
    self.layers = nnx.List(layers)
    self.scales = nnx.List(scales)
    self.layer_index = layer_index

  def __call__(self, x: jax.Array):
    T = self.num_steps
    if self.static_input:
      x = jnp.broadcast_to(x[None], (T,) + x.shape)
    if len(self.input_shape) == 1:  # a flat NIR input: our MLPs flatten HWC images
      x = x.reshape(x.shape[:2] + (-1,))
    values: dict[str, jax.Array] = {}
    aux = []
    for name in self.order:
      kind = self.kinds[name]
      if kind == "input":
        values[name] = x
        continue
      ins = [values[p] for p in self.preds[name]]
      v = ins[0]
      for other in ins[1:]:
        v = v + other
      if kind in ("affine", "conv"):
        v = unfold(self.layers[self.layer_index[name]](fold(v)), T)
      elif kind == "neuron":
        v, a = self.layers[self.layer_index[name]](v)
        aux.append(a)
      elif kind in ("avg_pool", "sum_pool"):
        k, s, p = self.statics[name]
        pooled = nnx.avg_pool(fold(v), k, strides=s, padding=((p[0], p[0]), (p[1], p[1])))
        v = unfold(pooled * (math.prod(k) if kind == "sum_pool" else 1.0), T)
      elif kind == "flatten":  # NIR flattens its own layout: CHW values go back from HWC
        rank_in, out = self.statics[name]
        if rank_in == 3:
          v = jnp.transpose(v, (0, 1, 4, 2, 3))
        v = v.reshape(v.shape[:2] + tuple(out))
        if len(out) == 3:
          v = jnp.transpose(v, (0, 1, 3, 4, 2))
      elif kind == "scale":
        v = v * self.scales[self.layer_index[name]][...]
      values[name] = v
    return values[self.output_name], collect_aux(aux) if aux else None


def import_nir(graph, num_steps: int, *, static_input: bool = True,
               neuron_overrides: dict | None = None, dt: float | None = None) -> NIRNetwork:
  """An NNX ``NIRNetwork`` running ``graph`` for ``num_steps`` steps (eval mode: it holds no
  BatchNorm; training it is allowed). Every node's shape and parameters are checked here: a
  graph our layers cannot run is refused with one ``UserError`` line naming the node.
  ``neuron_overrides``: ``NeuronSpec`` fields for the backward pass (e.g. ``surrogate``,
  ``alpha``, ``surrogate_mode``). ``dt``: the Euler step of one of our steps (default:
  ``metadata["dt"]``, else 1; snnTorch's graphs are written for 1e-4)."""
  model = NIRNetwork(graph, num_steps, static_input=static_input,
                     neuron_overrides=neuron_overrides, dt=dt)
  model.eval()
  return model


_READ_ERRORS = (ValueError, KeyError, TypeError, AssertionError, IndexError, AttributeError,
                OSError)


def _node_types(group, where: str, path: str):
  """Checks every node's ``type`` string in a NIR file's graph group before nir parses it
  (nir answers an unknown one with an empty ``AssertionError``)."""
  nir = _nir()
  known = set(getattr(nir.ir, "__all_ir", ())) or {
      k for k, v in vars(nir).items() if isinstance(v, type) and issubclass(v, nir.NIRNode)}
  if "nodes" not in group or not hasattr(group["nodes"], "keys"):
    raise UserError(f"{path}: not a NIR graph file ({where or 'the root'} has no 'nodes' group)")
  for name in group["nodes"].keys():
    node = group["nodes"][name]
    kind = node["type"][()] if hasattr(node, "keys") and "type" in node else None
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if not isinstance(kind, str) or kind not in known:
      raise UserError(f"{path}: node {where + name!r} has type {kind!r}, which NIR "
                      f"{getattr(nir, '__version__', '')} does not know (cfsnn_jax imports: "
                      f"{SUPPORTED})")
    if kind == "NIRGraph":
      _node_types(node, f"{where}{name}.", path)


def read_graph(path) -> Any:
  """``nir.read(path)`` (without nir's type check: ``import_nir`` checks every node) with one
  ``UserError`` line naming the file for a missing, non-HDF5, truncated or non-NIR file."""
  import os
  import h5py
  nir = _nir()
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f"{path}: no such NIR file")
  if os.path.isdir(path):
    raise UserError(f"{path}: is a directory, expected a NIR file (HDF5, written by nir.write)")
  if not h5py.is_hdf5(path):
    raise UserError(f"{path}: not a NIR file: expected HDF5 (written by nir.write), found "
                    f"{'an empty file' if os.path.getsize(path) == 0 else 'other content'}")
  try:
    with h5py.File(path, "r") as f:
      if "node" not in f:
        raise UserError(f"{path}: an HDF5 file but not NIR (no 'node' group; expected a file "
                        "written by nir.write)")
      _node_types(f["node"], "", path)
    return nir.read(path, type_check=False)
  except UserError:
    raise
  except _READ_ERRORS as e:
    what = " ".join(str(e).split()) or type(e).__name__
    raise UserError(f"{path}: not a readable NIR file ({type(e).__name__}: {what:.200})") from e


def read_nir(path: str, num_steps: int | None = None, **kwargs) -> NIRNetwork:
  """``import_nir(read_graph(path), num_steps)``; ``num_steps`` defaults to the file's
  ``metadata["num_steps"]`` when it was written by cfsnn_jax. A bad file or a graph our layers
  cannot run is one ``UserError`` line naming the file (and the node)."""
  graph = read_graph(path)
  if num_steps is None:
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    try:
      num_steps = int(np.asarray(meta.get("num_steps", 0)))
    except (TypeError, ValueError):
      num_steps = 0
    if not num_steps:
      raise UserError(f"{path}: no num_steps in the NIR metadata; pass num_steps=")
  try:
    return import_nir(graph, num_steps, **kwargs)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
