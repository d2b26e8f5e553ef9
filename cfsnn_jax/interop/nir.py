"""NIR (Neuromorphic Intermediate Representation) export and import of spiking networks.

Contract:
- ``export_nir(model) -> nir.NIRGraph``: a trained (or fresh) ``SpikingMLP``,
  ``SpikingConvNet`` or ``SpikingResNet`` (``standard`` or ``sew_add`` residuals) in eval
  mode, as NIR 1.0 nodes: ``Input`` (CHW, the image fed at every step), ``Conv2d`` /
  ``Affine`` with BatchNorm (running statistics) folded in, ``AvgPool2d``, ``Flatten``,
  ``IF`` / ``LIF`` neurons, residual adds as several edges into one node (NIR sums a node's
  inputs), ``Output`` (the logits per step). The graph is type-checked by ``nir`` itself.
- ``import_nir(graph, num_steps) -> NIRNetwork``: an NNX model of our layers (``nnx.Conv``,
  ``nnx.Linear``, ``SpikingNeuron``) that runs a NIR graph of those primitives; same
  ``__call__`` contract as our models (static ``[B, H, W, C]`` or events ``[T, B, H, W, C]``
  -> ``(logits_TBK, aux[L, T])``), so training, analysis and energy code run on it.
- ``write_nir(model, path)`` / ``read_nir(path, num_steps)``: the same through a NIR file.

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
threshold, per-step BatchNorm (TEBN: weights that change with t), max pooling, the ANN twin
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
    # Flax SAME pads (lo, hi) with hi = lo + 1 for even sizes and stride 2; NIR's padding is
    # symmetric: an equivalent kernel grows by hi - lo leading zeros and pads hi each side.
    grow = [hi - lo for lo, hi in pads]
    if any(g < 0 for g in grow):
      raise UserError(f"cannot export {name} to NIR: padding {pads} (more before than after)")
    dil = _pair(conv.kernel_dilation)
    if any(grow) and dil != (1, 1):
      raise UserError(f"cannot export {name} to NIR: asymmetric padding with dilation")
    if any(grow):
      w_oihw = np.pad(w_oihw, ((0, 0), (0, 0), (grow[0], 0), (grow[1], 0)))
    padding = (pads[0][1], pads[1][1])
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
    x, shape = ex.affine("fc", model.fc, None, x)
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
# Import.
# --------------------------------------------------------------------------------------------


def _uniform(values, what: str, name: str) -> float:
  a = np.asarray(values, np.float64).ravel()
  if a.size == 0 or not np.allclose(a, a[0], rtol=1e-6, atol=0):
    raise UserError(f"cannot import NIR node {name!r}: {what} varies across neurons; our "
                    "neurons have one value per layer")
  return float(a[0])


def _neuron_spec(node, name: str, dt: float = DT) -> tuple[neurons.NeuronSpec, tuple[int, ...]]:
  nir = _nir()
  shape = tuple(int(v) for v in np.shape(node.v_threshold))
  theta = _uniform(node.v_threshold, "v_threshold", name)
  v_reset = _uniform(node.v_reset, "v_reset", name)
  r = _uniform(node.r, "r", name)
  if isinstance(node, nir.IF):
    c = r * dt  # H = U + c x  ->  divide by c: same spikes with H' = U' + x
    kw = dict(charge="if")
  else:
    if not np.allclose(np.asarray(node.v_leak), 0.0):
      raise UserError(f"cannot import NIR node {name!r}: v_leak != 0 has no counterpart "
                      "(our charge has no leak towards a non-zero rest potential)")
    tau = _uniform(node.tau, "tau", name) / dt
    if tau < 1.0:
      raise UserError(f"cannot import NIR node {name!r}: tau/dt = {tau} < 1 makes the Euler "
                      "decay negative")
    c = r / tau
    kw = dict(charge="lif", tau=tau)
  if c <= 0:
    raise UserError(f"cannot import NIR node {name!r}: r must be positive, got {r}")
  spec = neurons.NeuronSpec(levels=1, signed=False, reset="hard", threshold=theta / c,
                            v_reset=v_reset / c, **kw)
  return spec, shape


class _Affine(nnx.Module):
  def __init__(self, node, rngs):
    w = np.asarray(node.weight, np.float32)
    self.linear = nnx.Linear(w.shape[1], w.shape[0], use_bias=True, rngs=rngs)
    self.linear.kernel[...] = jnp.asarray(w.T)
    b = getattr(node, "bias", None)
    self.linear.bias[...] = jnp.zeros(w.shape[0]) if b is None else jnp.asarray(
        np.broadcast_to(np.asarray(b, np.float32), (w.shape[0],)))

  def __call__(self, x_N):
    return self.linear(x_N)


class _Conv(nnx.Module):
  def __init__(self, node, rngs):
    w = np.asarray(node.weight, np.float32)  # [out, in, kh, kw]
    if node.groups != 1:
      raise UserError("cannot import a grouped NIR Conv2d (groups != 1)")
    pad = node.padding
    if isinstance(pad, str):
      pads = pad.upper()
    else:
      pads = [(int(p), int(p)) for p in pad]
    self.conv = nnx.Conv(w.shape[1], w.shape[0], tuple(w.shape[2:]),
                         strides=tuple(int(s) for s in node.stride), padding=pads,
                         kernel_dilation=tuple(int(d) for d in node.dilation),
                         use_bias=True, rngs=rngs)
    self.conv.kernel[...] = jnp.asarray(np.transpose(w, (2, 3, 1, 0)))
    self.conv.bias[...] = jnp.asarray(np.broadcast_to(np.asarray(node.bias, np.float32),
                                                      (w.shape[0],)))

  def __call__(self, x_NHWC):
    return self.conv(x_NHWC)


class NIRNetwork(nnx.Module):
  """A NIR graph run by our layers, in NIR's topological order (see ``import_nir``)."""

  def __init__(self, graph, num_steps: int, *, static_input: bool = True,
               neuron_overrides: dict | None = None, dt: float | None = None,
               rngs: nnx.Rngs | None = None):
    nir = _nir()
    rngs = rngs or nnx.Rngs(0)
    self.num_steps = int(num_steps)
    self.dt = float(dt if dt is not None else np.asarray((graph.metadata or {}).get("dt", DT)))
    self.static_input = static_input
    order, preds = _topological(graph)
    self.order, self.preds = order, preds
    self.kinds: dict[str, str] = {}
    self.statics: dict[str, Any] = {}
    layers, layer_index = [], {}
    self.input_name = self.output_name = None
    for name in order:
      node = graph.nodes[name]
      if isinstance(node, nir.Input):
        if self.input_name is not None:
          raise UserError("cannot import a NIR graph with more than one Input node")
        self.input_name = name
        shape = tuple(int(v) for v in node.input_type["input"])
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
        layers.append(_Conv(node, rngs))
        self.kinds[name] = "conv"
      elif isinstance(node, (nir.IF, nir.LIF)):
        spec, _ = _neuron_spec(node, name, self.dt)
        if neuron_overrides:
          spec = neurons.NeuronSpec(**{**spec.__dict__, **neuron_overrides})
        layer_index[name] = len(layers)
        layers.append(NeuronFactory(spec, self.num_steps)())
        self.kinds[name] = "neuron"
      elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        k, s, p = (tuple(int(v) for v in np.ravel(a)) for a in
                   (node.kernel_size, node.stride, node.padding))
        self.statics[name] = (k, s, p)
        self.kinds[name] = "avg_pool" if isinstance(node, nir.AvgPool2d) else "sum_pool"
      elif isinstance(node, nir.Flatten):
        if node.start_dim != 0 or node.end_dim != -1:
          raise UserError(f"cannot import NIR Flatten {name!r}: only start_dim=0, end_dim=-1")
        self.kinds[name] = "flatten"
      elif isinstance(node, nir.Scale):
        self.statics[name] = np.asarray(node.scale, np.float32)
        self.kinds[name] = "scale"
      else:
        raise UserError(f"cannot import NIR node {name!r} of type {type(node).__name__}: no "
                        "cfsnn_jax counterpart (supported: Input, Output, Affine, Linear, "
                        "Conv2d, AvgPool2d, SumPool2d, Flatten, Scale, IF, LIF)")
    if self.input_name is None or self.output_name is None:
      raise UserError("cannot import a NIR graph without one Input and one Output node")
    self.layers = nnx.List(layers)
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
      elif kind == "flatten":  # NIR flattens CHW; we hold HWC
        if v.ndim == 5:
          v = jnp.transpose(v, (0, 1, 4, 2, 3))
        v = v.reshape(v.shape[:2] + (-1,))
      elif kind == "scale":
        scale = self.statics[name]
        v = v * (jnp.transpose(scale, (1, 2, 0)) if scale.ndim == 3 else scale)
      values[name] = v
    return values[self.output_name], collect_aux(aux) if aux else None


def _topological(graph) -> tuple[list[str], dict[str, list[str]]]:
  preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
  succ: dict[str, list[str]] = {n: [] for n in graph.nodes}
  for a, b in graph.edges:
    if a not in graph.nodes or b not in graph.nodes:
      raise UserError(f"NIR edge ({a!r}, {b!r}) names a node that is not in the graph")
    preds[b].append(a)
    succ[a].append(b)
  if any(type(n).__name__ == "NIRGraph" for n in graph.nodes.values()):
    raise UserError("cannot import nested NIR graphs (subgraph nodes); flatten them first")
  indeg = {n: len(p) for n, p in preds.items()}
  ready = [n for n in graph.nodes if indeg[n] == 0]
  order = []
  while ready:
    n = ready.pop(0)
    order.append(n)
    for m in succ[n]:
      indeg[m] -= 1
      if indeg[m] == 0:
        ready.append(m)
  if len(order) != len(graph.nodes):
    raise UserError("cannot import a recurrent NIR graph (the edges have a cycle): our "
                    "models are feed-forward per step")
  return order, preds


def import_nir(graph, num_steps: int, *, static_input: bool = True,
               neuron_overrides: dict | None = None, dt: float | None = None) -> NIRNetwork:
  """An NNX ``NIRNetwork`` running ``graph`` for ``num_steps`` steps (eval mode: it holds no
  BatchNorm; training it is allowed). ``neuron_overrides``: ``NeuronSpec`` fields for the
  backward pass (e.g. ``surrogate``, ``alpha``, ``surrogate_mode``). ``dt``: the Euler step
  of one of our steps (default: ``metadata["dt"]``, else 1)."""
  model = NIRNetwork(graph, num_steps, static_input=static_input,
                     neuron_overrides=neuron_overrides, dt=dt)
  model.eval()
  return model


def read_nir(path: str, num_steps: int | None = None, **kwargs) -> NIRNetwork:
  """``import_nir(nir.read(path), num_steps)``; ``num_steps`` defaults to the file's
  ``metadata["num_steps"]`` when it was written by cfsnn_jax."""
  graph = _nir().read(path)
  if num_steps is None:
    num_steps = int(np.asarray((graph.metadata or {}).get("num_steps", 0)))
    if not num_steps:
      raise UserError(f"{path}: no num_steps in the NIR metadata; pass num_steps=")
  return import_nir(graph, num_steps, **kwargs)
