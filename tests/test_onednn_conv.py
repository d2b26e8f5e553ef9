"""oneDNN convolution gradients (cfsnn_jax/backends/onednn_conv.py): values and gradients equal to
``lax.conv_general_dilated``'s, the fallbacks, the switch, the build's failure modes, and a
training step that uses them equal to one that does not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cfsnn_jax.backends import onednn_conv

pytestmark = pytest.mark.skipif(not onednn_conv._build_possible(),
                                reason="no oneDNN headers / C++ compiler on this machine")


@pytest.fixture
def forced_on(monkeypatch):
  monkeypatch.setenv(onednn_conv.ENV_SWITCH, "1")
  assert onednn_conv.status()["enabled"], onednn_conv.status()


def _ref(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _value_and_grads(conv, x, w, g, strides, padding):
  y, vjp = jax.vjp(lambda x, w: conv(x, w, strides, padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)
  return (y, *vjp(g))


CASES = [  # x shape NHWC, kernel HW, out channels, strides, padding
    ((4, 9, 9, 3), (3, 3), 5, (1, 1), "SAME"),
    ((2, 8, 8, 16), (3, 3), 32, (2, 2), "SAME"),
    ((3, 7, 10, 8), (1, 1), 12, (2, 2), "VALID"),
    ((2, 6, 6, 4), (3, 3), 4, (1, 1), ((2, 0), (1, 2))),  # asymmetric padding
    ((2, 12, 12, 8), (5, 3), 6, (1, 2), ((2, 2), (1, 1))),  # non-square kernel and strides
]


@pytest.mark.parametrize("shape,kernel,out_ch,strides,padding", CASES)
def test_float32_values_and_gradients_equal_lax(forced_on, shape, kernel, out_ch, strides,
                                                padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  w = jnp.asarray(rng.standard_normal(kernel + (shape[3], out_ch), np.float32) * 0.2)
  y_shape = jax.eval_shape(lambda: _ref(x, w, strides, padding)).shape
  g = jnp.asarray(rng.standard_normal(y_shape, np.float32))
  fn = jax.jit(lambda x, w, g: _value_and_grads(onednn_conv.conv_general_dilated, x, w, g,
                                                strides, padding))
  # strided 1x1 (shortcut) convolutions stay XLA's: the kernel corrupted the heap on them
  # (ResNet-18's 64x64 shortcut, docs/DECISIONS.md "Issue 23")
  kernels = not (kernel == (1, 1) and strides != (1, 1))
  assert ("CfsnnConvBwdData" in fn.lower(x, w, g).as_text()) == kernels
  got = fn(x, w, g)
  want = _value_and_grads(lax.conv_general_dilated, x, w, g, strides, padding)
  for a, b, name in zip(got, want, ("y", "dx", "dw")):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5 * float(
        np.abs(np.asarray(b)).max()), err_msg=name)


def test_bfloat16_forward_and_gradients_match_float32_within_bf16_rounding(forced_on):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((8, 16, 16, 32), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 32), np.float32) * 0.1)
  g = jnp.asarray(rng.standard_normal((8, 16, 16, 32), np.float32))
  bf = lambda a: a.astype(jnp.bfloat16)  # noqa: E731
  fn = jax.jit(lambda x, w, g: _value_and_grads(onednn_conv.conv_general_dilated, x, w, g,
                                                (1, 1), "SAME"))
  hlo = fn.lower(bf(x), bf(w), bf(g)).as_text()
  assert "CfsnnConvFwd" in hlo and "CfsnnConvBwdWeights" in hlo
  got = fn(bf(x), bf(w), bf(g))
  # the reference: the same bf16-rounded operands, convolved in float32
  want = _value_and_grads(lax.conv_general_dilated, *(bf(a).astype(jnp.float32)
                                                      for a in (x, w, g)), (1, 1), "SAME")
  for a, b, name in zip(got, want, ("y", "dx", "dw")):
    assert a.dtype == jnp.bfloat16
    b = np.asarray(b)
    err = np.abs(np.asarray(a.astype(jnp.float32)) - b).max() / np.abs(b).max()
    assert err < 1e-2, (name, err)  # bf16 output rounding (8 bits of mantissa)



@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 8, 8, 16), (2, 9, 9, 16), (3, 8, 7, 8)],
                         ids=["even", "odd", "even_by_odd"])
def test_stride_2_with_symmetric_padding_equals_lax(forced_on, shape, dtype):
  """The models' strided 3x3 convolutions (``padding=1`` on each side, as torch's, issue 26):
  with an even input the last padded row and column are read by no window, with an odd one
  every one is; both agree with XLA's forward, dx and dw (bf16: to bf16 rounding)."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, shape[3], 24), np.float32) * 0.2)
  strides, pads = (2, 2), ((1, 1), (1, 1))
  y_shape = jax.eval_shape(lambda: _ref(x, w, strides, pads)).shape
  assert y_shape[1:3] == tuple((n + 1) // 2 for n in shape[1:3])  # ceil(n / 2), as torch
  g = jnp.asarray(rng.standard_normal(y_shape, np.float32))
  if dtype == "bfloat16":
    x, w, g = (a.astype(jnp.bfloat16) for a in (x, w, g))
  fn = jax.jit(lambda x, w, g: _value_and_grads(onednn_conv.conv_general_dilated, x, w, g,
                                                strides, pads))
  hlo = fn.lower(x, w, g).as_text()
  assert "CfsnnConvBwdData" in hlo and "CfsnnConvBwdWeights" in hlo
  got = fn(x, w, g)
  # the reference: XLA's convolution of the same operands, in float32
  want = _value_and_grads(lax.conv_general_dilated, *(a.astype(jnp.float32) for a in (x, w, g)),
                          strides, pads)
  for a, b, name in zip(got, want, ("y", "dx", "dw")):
    assert a.dtype == jnp.dtype(dtype), name
    a, b = np.asarray(a.astype(jnp.float32)), np.asarray(b)
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err < (2e-5 if dtype == "float32" else 1e-2), (name, err)

@pytest.mark.parametrize("kwargs", [
    dict(rhs_dilation=(2, 2)), dict(feature_group_count=2), dict(lhs_dilation=(2, 2)),
    dict(dimension_numbers=("NCHW", "OIHW", "NCHW")), dict(precision=lax.Precision.HIGHEST)])
def test_unsupported_convolutions_stay_xla_and_equal(forced_on, kwargs):
  rng = np.random.default_rng(2)
  nchw = kwargs.get("dimension_numbers", ("NHWC",))[0] == "NCHW"
  x = jnp.asarray(rng.standard_normal((2, 4, 8, 8) if nchw else (2, 8, 8, 4), np.float32))
  groups = kwargs.get("feature_group_count", 1)
  w = jnp.asarray(rng.standard_normal((6, 4 // groups, 3, 3) if nchw else (3, 3, 4 // groups, 6),
                                      np.float32))
  kwargs = dict(dict(dimension_numbers=("NHWC", "HWIO", "NHWC")), **kwargs)
  pad = ((1, 1), (1, 1)) if "lhs_dilation" in kwargs else "SAME"  # no string padding there
  fn = lambda conv: jax.grad(lambda x: conv(x, w, (1, 1), pad, **kwargs).sum())  # noqa
  assert "CfsnnConv" not in jax.jit(fn(onednn_conv.conv_general_dilated)).lower(x).as_text()
  np.testing.assert_allclose(fn(onednn_conv.conv_general_dilated)(x),
                             fn(lax.conv_general_dilated)(x), rtol=1e-6)


def test_switch_off_and_xla_only_trace_plain_xla(monkeypatch):
  x = jnp.ones((2, 8, 8, 4))
  w = jnp.ones((3, 3, 4, 4))
  grad = jax.jit(jax.grad(lambda w: onednn_conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()))
  monkeypatch.setenv(onednn_conv.ENV_SWITCH, "0")
  assert onednn_conv.status() == {"enabled": False, "reason": "CFSNN_ONEDNN_CONV=0",
                                  "library": None}
  assert "CfsnnConv" not in grad.lower(w).as_text()
  monkeypatch.setenv(onednn_conv.ENV_SWITCH, "1")
  with onednn_conv.xla_only():
    assert not onednn_conv.enabled()
    assert "CfsnnConv" not in grad.lower(w).as_text()
  assert onednn_conv.enabled()
  monkeypatch.delenv(onednn_conv.ENV_SWITCH)  # auto: 4 simulated devices here -> XLA's
  assert onednn_conv.status()["reason"].startswith("4 devices")
  monkeypatch.setenv(onednn_conv.ENV_SWITCH, "1")  # forced, but not on a CPU backend: off
  monkeypatch.setattr(onednn_conv.jax, "default_backend", lambda: "gpu")
  assert onednn_conv.status() == {"enabled": False, "library": None,
                                  "reason": "backend gpu (the kernels are CPU-only)"}


def test_a_failed_build_falls_back_with_its_reason(monkeypatch, tmp_path):
  monkeypatch.setenv(onednn_conv.ENV_SWITCH, "1")
  monkeypatch.setenv("CFSNN_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  monkeypatch.setattr(onednn_conv, "_loaded", {})
  st = onednn_conv.status()
  assert st["enabled"] is False and "no-such-compiler" in st["reason"]
  x = jnp.ones((1, 4, 4, 2))
  y = onednn_conv.conv_general_dilated(x, jnp.ones((3, 3, 2, 2)), (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, _ref(x, jnp.ones((3, 3, 2, 2)), (1, 1), "SAME"))
  assert not list((tmp_path / "cache").glob("*.so"))  # no half-written library left


def test_build_is_cached_and_keyed_by_source(monkeypatch, tmp_path):
  monkeypatch.setenv("CFSNN_CACHE_DIR", str(tmp_path))
  first = onednn_conv._build()
  mtime = first.stat().st_mtime_ns
  assert onednn_conv._build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt
  assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, first.name + ".json"]


def test_train_step_with_onednn_gradients_equals_xla(monkeypatch):
  """Two steps of the TET ResNet-19 (tiny widths) on one device: loss, gradient norm and
  parameters agree with and without the kernels (the compiled step does call them)."""
  from benchmarks.cases import Case
  from benchmarks.measure import compile_case
  out = {}
  for switch in ("0", "1"):
    monkeypatch.setenv(onednn_conv.ENV_SWITCH, switch)
    c = compile_case(Case("resnet19_tet", 2, 4, tiny=True), devices=jax.devices()[:1])
    assert ("CfsnnConvBwdWeights" in c["compiled"].as_text()) == (switch == "1")
    state, m = c["step"](c["state"], c["batch"])
    state, m = c["step"](state, c["batch"])
    out[switch] = (float(m["loss"]), float(m["grad_norm"]), state["params"])
  assert out["1"][0] == pytest.approx(out["0"][0], rel=1e-5)
  assert out["1"][1] == pytest.approx(out["0"][1], rel=1e-4)
  for a, b in zip(jax.tree.leaves(out["1"][2]), jax.tree.leaves(out["0"][2])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_gradients_are_bitwise_reproducible(forced_on):
  """Resume is exact only if a step recomputed from the same state gives the same bits."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((16, 16, 16, 32), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 64), np.float32) * 0.1)
  g = jnp.asarray(rng.standard_normal((16, 16, 16, 64), np.float32))
  fn = jax.jit(lambda x, w, g: _value_and_grads(onednn_conv.conv_general_dilated, x, w, g,
                                                (1, 1), "SAME"))
  first = [np.asarray(a) for a in fn(x, w, g)]
  for _ in range(3):
    for a, b in zip(fn(x, w, g), first):
      np.testing.assert_array_equal(np.asarray(a), b)
