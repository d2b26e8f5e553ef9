"""Independent references of the published spiking models, in plain ``jax.numpy`` / ``lax``.

Written from the official code's structure, not from ``cfsnn_jax.models`` (nothing here
imports the package's models, layers or neurons):
- ``tet_resnet19``: TET's ResNet-19 (Deng et al., 2022; ``models/resnet_models.py`` of
  Gus-Lab/temporal_efficient_training): stem conv3x3 64 + tdBN + LIF, BasicBlocks [3, 3, 2]
  of widths 128-256-512 (strides 1, 2, 2; conv1x1 + BN shortcut where the shape changes),
  ``LIF(BN(conv2(.)) + shortcut)``, adaptive average pool, FC 256 (bias) + LIF, FC K (bias).
- ``tet_vggsnn``: TET's VGGSNN (``models/VGG_models.py``): eight ``Conv2d(k=3, s=1, p=1,
  bias=True) -> BatchNorm2d -> LIF`` layers with four ``AvgPool2d(2)``, flatten, FC K (bias).
- ``dsatgo_resnet19``: the DS-ATGO code's ResNet-19 (docs/MODELS.md): stem 128 (identity
  shortcut in the first block), SEW-ADD blocks ``sn2(BN(conv2(.))) + shortcut`` with a
  ``sn(BN(conv1x1(x)))`` shortcut where the shape changes, and the head
  ``Linear(512, 256, bias=False) -> BatchNorm1d(256) -> PLIF -> Linear(256, K, bias=False)``.

Torch semantics, written out: NCHW activations and OIHW kernels; ``padding=1`` is explicit
``((1, 1), (1, 1))``; a 1x1 stride-2 convolution takes no padding; BatchNorm in training mode
normalises with the batch statistics of the ``T*B`` folded batch (TET's ``SeqToANNContainer``
/ ``tdBatchNorm`` fold ``[B, T]`` into one batch axis), biased variance, eps 1e-5; the
adaptive average pool to 1x1 is the spatial mean; ``torch.flatten(x, 2)`` flattens C, H, W in
that order; ``Linear`` computes ``x @ W.T + b`` with ``W`` of shape ``[out, in]``.

The torch code is batch-major ``[B, T, ...]``; these functions are time-major ``[T, B, ...]``
(a relabelling: the fold of both axes gives the same batch statistics). Neurons (written from
docs/METHOD.md §1 and §4, and TET's ``LIFSpike``):
- TET's LIF: ``mem = 0.5 mem + x``; ``spike = [mem - 1 > 0]``; ``mem = (1 - spike) mem``; the
  spike's gradient is TET's ``ZIF`` with ``gamma = 1``: ``max(0, 1 - |mem - 1|)``.
- DS-ATGO's PLIF: ``H = sigmoid(w) U + X``; ``theta[t] = mean(H[t]) + std(H[t])`` (unbiased,
  over the whole step, no gradient); ``spike = [H >= theta]``; ``U = (1 - spike) H``; the
  spike's gradient is a box of height ``1/width`` and width ``width`` around ``theta`` with
  ``width = 1 - tanh(1 - d)`` (``d < 1``) or ``1 + tanh(d - 1)``, ``d = std(H[t])`` (METHOD.md
  §4.2), floored at 1e-3, no gradient through ``theta`` or ``width``.

Each ``forward(params, x, ...)`` takes a flat dict ``{name: array}`` (names as ``*_shapes``
lists them; kernels in torch layout) and returns ``(logits_TBK, records)``: one record per
spiking layer, in forward order, ``{"name", "input_TB", "potential_TB", "spikes_TB",
"theta_T"}``. ``forced`` (a list of spike arrays, one per spiking layer) makes each layer pass
those spikes on (to the next layer and to its own reset) in place of its own, while its record
keeps its own: a comparison then sees every layer on the same upstream spikes, so one spike
that flips at the threshold does not spread into the layers after it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

EPS = 1e-5  # torch BatchNorm's eps
HIGHEST = lax.Precision.HIGHEST


# --- stateless layers (torch semantics) ------------------------------------------------------

def conv2d(x_NCHW, w_OIHW, stride: int = 1, padding: int = 0):
  """``nn.Conv2d(..., stride, padding, bias=False)``: ``padding`` zeros on each side."""
  return lax.conv_general_dilated(x_NCHW, w_OIHW, (stride, stride),
                                  ((padding, padding), (padding, padding)),
                                  dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=HIGHEST)


def batch_norm_train(x, weight, bias):
  """``BatchNorm{1,2}d`` in training mode on ``[N, C, ...]``: statistics over every axis but
  the channels (two-pass, biased variance), then the affine map."""
  axes = (0,) + tuple(range(2, x.ndim))
  shape = (1, -1) + (1,) * (x.ndim - 2)
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  return (x - mean) / jnp.sqrt(var + EPS) * weight.reshape(shape) + bias.reshape(shape)


def avg_pool2(x_NCHW):
  """``nn.AvgPool2d(2)`` (H and W even)."""
  n, c, h, w = x_NCHW.shape
  return x_NCHW.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def linear(x, weight_OI, bias=None):
  y = jnp.matmul(x, weight_OI.T, precision=HIGHEST)
  return y if bias is None else y + bias


def per_step(fn, x_TB, *args):
  """``SeqToANNContainer``: ``fn`` on the folded ``[T*B, ...]`` batch, unfolded again."""
  T, B = x_TB.shape[:2]
  y = fn(x_TB.reshape((T * B,) + x_TB.shape[2:]), *args)
  return y.reshape((T, B) + y.shape[1:])


# --- spikes with their surrogate gradients ---------------------------------------------------

@jax.custom_vjp
def tet_spike(v):
  """TET's ``ZIF``: forward ``[v > 0]``; backward ``max(0, 1 - |v|)`` (``gamma = 1``)."""
  return (v > 0).astype(v.dtype)


def _tet_spike_fwd(v):
  return tet_spike(v), v


def _tet_spike_bwd(v, g):
  return (g * jnp.maximum(0.0, 1.0 - jnp.abs(v)),)


tet_spike.defvjp(_tet_spike_fwd, _tet_spike_bwd)


@jax.custom_vjp
def box_spike(v, width):
  """Forward ``[v >= 0]``; backward ``(1 / width) [|v| < width / 2]``; no width gradient."""
  return (v >= 0).astype(v.dtype)


def _box_spike_fwd(v, width):
  return box_spike(v, width), (v, width)


def _box_spike_bwd(res, g):
  v, width = res
  return g * (jnp.abs(v) < width / 2).astype(v.dtype) / width, jnp.zeros_like(width)


box_spike.defvjp(_box_spike_fwd, _box_spike_bwd)


def dynamic_width(d):
  """DS-ATGO's surrogate width of the statistic ``d`` (METHOD.md §4.2, base width 1)."""
  w = jnp.where(d < 1, 1 - jnp.tanh(1 - d), 1 + jnp.tanh(d - 1))
  return jnp.maximum(w, 1e-3)


# --- neurons (one spiking layer over T) ------------------------------------------------------

class Recorder:
  """Collects the records of the spiking layers and hands out forced spikes, in order."""

  def __init__(self, forced=None):
    self.forced = forced
    self.records = []

  def fire(self, name, x_TB, step):
    """Runs ``step(u, x_t) -> (h_t, s_t, theta_t)`` over T; the reset is ``(1 - s) h``."""
    i = len(self.records)
    forced = None if self.forced is None else self.forced[i]
    u = jnp.zeros_like(x_TB[0])
    hs, ss, thetas, used = [], [], [], []
    for t in range(x_TB.shape[0]):
      h, s, theta = step(u, x_TB[t])
      s_used = s if forced is None else forced[t].astype(s.dtype)
      u = (1 - s_used) * h  # hard reset to 0; the gradient flows through the spike
      hs.append(h)
      ss.append(s)
      thetas.append(theta)
      used.append(s_used)
    self.records.append(dict(name=name, input_TB=x_TB, potential_TB=jnp.stack(hs),
                             spikes_TB=jnp.stack(ss), theta_T=jnp.stack(thetas)))
    return jnp.stack(used)


def tet_lif(rec, name, x_TB):
  """TET's ``LIFSpike(thresh=1.0, tau=0.5, gama=1.0)``."""
  def step(u, x):
    h = 0.5 * u + x
    return h, tet_spike(h - 1.0), jnp.asarray(1.0, h.dtype)
  return rec.fire(name, x_TB, step)


def dsatgo_plif(rec, name, x_TB, w):
  """DS-ATGO's PLIF with the adaptive threshold and the dynamic surrogate width."""
  lam = jax.nn.sigmoid(w)

  def step(u, x):
    h = lam * u + x
    hd = lax.stop_gradient(h)
    std = jnp.std(hd, ddof=1)
    theta = jnp.mean(hd) + std
    return h, box_spike(h - theta, dynamic_width(std)), theta
  return rec.fire(name, x_TB, step)


# --- parameter lists -------------------------------------------------------------------------

def _bn(shapes, name, c):
  shapes[f"{name}.weight"] = (c,)
  shapes[f"{name}.bias"] = (c,)


def _resnet_blocks(stem: int):
  """``(name, in, out, stride, has_downsample)`` of ResNet-19's eight BasicBlocks."""
  blocks, inplanes = [], stem
  for layer, (planes, n, stride) in enumerate([(128, 3, 1), (256, 3, 2), (512, 2, 2)], 1):
    for i in range(n):
      s = stride if i == 0 else 1
      blocks.append((f"layer{layer}.{i}", inplanes, planes, s, s != 1 or inplanes != planes))
      inplanes = planes
  return blocks


def tet_resnet19_shapes(num_classes: int, in_ch: int = 3) -> dict[str, tuple[int, ...]]:
  shapes = {"conv1.weight": (64, in_ch, 3, 3)}
  _bn(shapes, "bn1", 64)
  for name, cin, cout, _, down in _resnet_blocks(64):
    shapes[f"{name}.conv1.weight"] = (cout, cin, 3, 3)
    _bn(shapes, f"{name}.bn1", cout)
    shapes[f"{name}.conv2.weight"] = (cout, cout, 3, 3)
    _bn(shapes, f"{name}.bn2", cout)
    if down:
      shapes[f"{name}.downsample.conv.weight"] = (cout, cin, 1, 1)
      _bn(shapes, f"{name}.downsample.bn", cout)
  shapes.update({"fc1.weight": (256, 512), "fc1.bias": (256,),
                 "fc2.weight": (num_classes, 256), "fc2.bias": (num_classes,)})
  return shapes


def dsatgo_resnet19_shapes(num_classes: int, in_ch: int = 3) -> dict[str, tuple[int, ...]]:
  shapes = {"conv1.weight": (128, in_ch, 3, 3)}
  _bn(shapes, "bn1", 128)
  shapes["sn1.w"] = ()
  for name, cin, cout, _, down in _resnet_blocks(128):
    shapes[f"{name}.conv1.weight"] = (cout, cin, 3, 3)
    _bn(shapes, f"{name}.bn1", cout)
    shapes[f"{name}.sn1.w"] = ()
    shapes[f"{name}.conv2.weight"] = (cout, cout, 3, 3)
    _bn(shapes, f"{name}.bn2", cout)
    shapes[f"{name}.sn2.w"] = ()
    if down:
      shapes[f"{name}.downsample.conv.weight"] = (cout, cin, 1, 1)
      _bn(shapes, f"{name}.downsample.bn", cout)
      shapes[f"{name}.downsample.sn.w"] = ()
  shapes["fc1.weight"] = (256, 512)
  _bn(shapes, "bn_fc", 256)
  shapes["sn_fc.w"] = ()
  shapes["fc2.weight"] = (num_classes, 256)
  return shapes


VGGSNN_LAYOUT = (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A")


def tet_vggsnn_shapes(num_classes: int = 10, in_ch: int = 2,
                      size: int = 48) -> dict[str, tuple[int, ...]]:
  shapes, cin, i = {}, in_ch, 0
  for v in VGGSNN_LAYOUT:
    if v == "A":
      continue
    shapes[f"features.{i}.conv.weight"] = (v, cin, 3, 3)
    shapes[f"features.{i}.conv.bias"] = (v,)
    _bn(shapes, f"features.{i}.bn", v)
    cin, i = v, i + 1
  w = size // 16
  shapes.update({"classifier.weight": (num_classes, 512 * w * w),
                 "classifier.bias": (num_classes,)})
  return shapes


def count(shapes) -> int:
  return sum(math.prod(s) for s in shapes.values())


def init_params(shapes, seed: int = 0, dtype=jnp.float32) -> dict[str, jax.Array]:
  """Random parameters of ``shapes`` (for tests that need values, not trained weights)."""
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(size=s) * (1 / math.sqrt(max(1, math.prod(s[1:])))),
                         dtype) for k, s in shapes.items()}


# --- models ----------------------------------------------------------------------------------

def _bn_p(p, name):
  return p[f"{name}.weight"], p[f"{name}.bias"]


def _repeat(x_BCHW, T):
  """TET's ``add_dimention``: the static image at every step, ``[T, B, C, H, W]``."""
  return jnp.broadcast_to(x_BCHW[None], (T,) + x_BCHW.shape)


def tet_resnet19(params, x_BCHW, T: int, forced=None):
  """TET's ResNet-19 on a static batch ``[B, 3, H, W]``; logits ``[T, B, K]``."""
  p, rec = params, Recorder(forced)
  bn = lambda x, name: per_step(batch_norm_train, x, *_bn_p(p, name))
  x = per_step(conv2d, _repeat(x_BCHW, T), p["conv1.weight"], 1, 1)
  x = tet_lif(rec, "sn_stem", bn(x, "bn1"))
  for name, _, _, stride, down in _resnet_blocks(64):
    out = per_step(conv2d, x, p[f"{name}.conv1.weight"], stride, 1)
    out = tet_lif(rec, f"{name}.sn1", bn(out, f"{name}.bn1"))
    out = bn(per_step(conv2d, out, p[f"{name}.conv2.weight"], 1, 1), f"{name}.bn2")
    identity = x
    if down:
      identity = bn(per_step(conv2d, x, p[f"{name}.downsample.conv.weight"], stride, 0),
                    f"{name}.downsample.bn")
    x = tet_lif(rec, f"{name}.sn2", out + identity)
  x = jnp.mean(x, axis=(3, 4))  # AdaptiveAvgPool2d((1, 1)) + flatten(2): [T, B, 512]
  x = tet_lif(rec, "sn_fc", linear(x, p["fc1.weight"], p["fc1.bias"]))
  return linear(x, p["fc2.weight"], p["fc2.bias"]), rec.records


def dsatgo_resnet19(params, x_BCHW, T: int, forced=None):
  """The DS-ATGO code's ResNet-19 (SEW-ADD, BN head) on ``[B, 3, H, W]``; ``[T, B, K]``."""
  p, rec = params, Recorder(forced)
  bn = lambda x, name: per_step(batch_norm_train, x, *_bn_p(p, name))
  sn = lambda name, x: dsatgo_plif(rec, name, x, p[f"{name}.w"])
  x = per_step(conv2d, _repeat(x_BCHW, T), p["conv1.weight"], 1, 1)
  x = sn("sn1", bn(x, "bn1"))
  for name, _, _, stride, down in _resnet_blocks(128):
    out = sn(f"{name}.sn1", bn(per_step(conv2d, x, p[f"{name}.conv1.weight"], stride, 1),
                               f"{name}.bn1"))
    out = sn(f"{name}.sn2", bn(per_step(conv2d, out, p[f"{name}.conv2.weight"], 1, 1),
                               f"{name}.bn2"))
    identity = x
    if down:
      identity = sn(f"{name}.downsample.sn",
                    bn(per_step(conv2d, x, p[f"{name}.downsample.conv.weight"], stride, 0),
                       f"{name}.downsample.bn"))
    x = out + identity  # SEW ADD: spikes plus spikes
  x = jnp.mean(x, axis=(3, 4))
  x = sn("sn_fc", bn(linear(x, p["fc1.weight"]), "bn_fc"))  # BatchNorm1d over T*B
  return linear(x, p["fc2.weight"]), rec.records


def tet_vggsnn(params, x_TBCHW, forced=None):
  """TET's VGGSNN on event frames ``[T, B, 2, H, W]``; logits ``[T, B, K]``."""
  p, rec = params, Recorder(forced)
  x, i = x_TBCHW, 0
  for v in VGGSNN_LAYOUT:
    if v == "A":
      x = per_step(avg_pool2, x)
      continue
    name = f"features.{i}"
    y = per_step(lambda z: conv2d(z, p[f"{name}.conv.weight"], 1, 1)
                 + p[f"{name}.conv.bias"].reshape(1, -1, 1, 1), x)
    x = tet_lif(rec, f"{name}.act", per_step(batch_norm_train, y, *_bn_p(p, f"{name}.bn")))
    i += 1
  x = x.reshape(x.shape[:2] + (-1,))  # torch.flatten(x, 2): C, H, W order
  return linear(x, p["classifier.weight"], p["classifier.bias"]), rec.records
