"""Firing rule for any threshold sign (METHOD.md §1, issue 14): the binary spike is
``H >= theta`` for every theta (as SpikingJelly and the DS-ATGO code); multi-level / signed
adaptive thresholds are floored at ``neurons.ADAPTIVE_THETA_FLOOR``; theta = 0, mostly
negative currents and all-zero steps give no NaN in train or eval mode, forward or backward,
on the fused and the autodiff paths; the DS-ATGO EMA stays finite; inert settings are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfsnn_jax.neuron import layers, equations as neurons, fused as neurons_fused
from cfsnn_jax.errors import UserError

T = 3


def _currents(kind):
  x = jax.random.normal(jax.random.key(0), (T, 8, 16))
  if kind == "negative":  # mostly negative: theta_t = mean + std < 0
    return x - 2.0
  if kind == "zero_step":  # an all-zero step (e.g. attention with no Q spikes)
    return x.at[1].set(0.0) - 1.0
  return x


def _value_and_grads(spec, x, bptt, training=True, theta_T=None):
  def loss(x, alpha, decay):
    S, H, th = neurons_fused.run_neuron(x, spec, alpha_T=alpha, decay=decay, theta_T=theta_T,
                                        training=training, bptt=bptt)
    return jnp.sum(S * jnp.cos(x)), (S, H, th)
  return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
      x, jnp.full((T,), 2.0), jnp.float32(0.3))


@pytest.mark.parametrize("theta", [-1.02, 0.0, 0.7])
def test_binary_spike_is_h_at_least_theta_for_every_sign(theta):
  h = jnp.linspace(-3, 3, 61)
  np.testing.assert_array_equal(neurons.staircase(h, theta, 1, False), h >= theta)
  s, vjp = jax.vjp(lambda h: neurons.spike(h, jnp.float32(theta), 4.0, 1, False, "sigmoid"), h)
  np.testing.assert_array_equal(s, h >= theta)
  assert np.all(np.isfinite(vjp(jnp.ones_like(h))[0]))


@pytest.mark.parametrize("kind", ["negative", "zero_step"])
@pytest.mark.parametrize("bptt", ["fused", "autodiff"])
def test_dsatgo_fires_where_h_reaches_a_non_positive_threshold(kind, bptt):
  spec = neurons.resolve_spec("dsatgo")
  (_, (S, H, theta)), grads = _value_and_grads(spec, _currents(kind), bptt)
  assert float(jnp.min(theta)) <= 0.0  # the case of the issue
  for t in range(T):  # the official rule, not floor(H / theta)
    np.testing.assert_array_equal(S[t], H[t] >= theta[t])
  assert all(np.all(np.isfinite(g)) for g in grads)
  if kind == "negative":  # about the official share (16 %), not the flipped 84 %
    assert 0.05 < float(S[0].mean()) < 0.3


@pytest.mark.parametrize("name,overrides", [("dsatgo", {}), ("cf", dict(threshold_mode="adaptive")),
                                            ("cf_signed", dict(threshold_mode="adaptive"))])
@pytest.mark.parametrize("kind", ["negative", "zero_step"])
def test_fused_equals_autodiff_and_is_finite_at_the_edges(name, overrides, kind):
  spec = neurons.resolve_spec(name, **overrides)
  x = _currents(kind)
  (v_f, (S_f, _, th_f)), g_f = _value_and_grads(spec, x, "fused")
  (v_a, (S_a, _, th_a)), g_a = _value_and_grads(spec, x, "autodiff")
  np.testing.assert_array_equal(S_f, S_a)
  np.testing.assert_allclose(v_f, v_a, rtol=1e-6)
  for a, b in zip(g_f, g_a):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if spec.levels > 1 or spec.signed:  # the staircase needs theta > 0: floored
    assert float(jnp.min(th_f)) >= neurons.ADAPTIVE_THETA_FLOOR


@pytest.mark.parametrize("bptt", ["fused", "autodiff"])
def test_theta_exactly_zero_in_eval_mode(bptt):
  spec = neurons.resolve_spec("dsatgo")
  x = _currents("plain")
  (_, (S, H, _)), grads = _value_and_grads(spec, x, bptt, training=False,
                                           theta_T=jnp.zeros((T,)))
  np.testing.assert_array_equal(S, H >= 0)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_ema_rejects_a_non_finite_batch_threshold():
  """One element per step: the unbiased std is NaN; the step falls back to the EMA, which
  stays finite and unchanged."""
  layer = layers.SpikingNeuron(neurons.resolve_spec("dsatgo"), T)
  before = np.asarray(layer.theta_ema[...])
  S, stats = layer(jnp.full((T, 1, 1), 0.5))
  assert np.all(np.isfinite(np.asarray(layer.theta_ema[...])))
  np.testing.assert_array_equal(layer.theta_ema[...], before)
  assert np.all(np.isfinite(stats.theta_T)) and np.all(np.isfinite(S))
  layer.theta_ema[...] = jnp.full((T,), -0.5)  # eval with a negative EMA: H >= -0.5
  layer.use_running_average = True
  S, _ = layer(jnp.asarray([-0.6, -0.2, 0.0])[:, None, None] * jnp.ones((T, 1, 2)))
  np.testing.assert_array_equal(S[:, 0, 0], [0.0, 1.0, 1.0])


def test_dynamic_width_never_reaches_zero():
  w = neurons.dynamic_width(jnp.asarray([-50.0, -8.0, 0.0, 1.0, 5.0]), 1.0)
  assert float(w.min()) >= neurons.MIN_WIDTH and np.all(np.isfinite(1.0 / w))
  spec = neurons.resolve_spec("dsatgo", dynamic_stat="threshold")
  (_, _), grads = _value_and_grads(spec, _currents("negative") * 40.0, "fused")
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("overrides,match", [
    (dict(charge="if", decay_input=True), "never charges"),
    (dict(charge="lif", tau=float("inf")), "tau must be finite"),
    (dict(adaptive_fc=0.0), "adaptive_fc must be > 0"),
    (dict(adaptive_momentum=0.0), "adaptive_momentum must be in"),
])
def test_settings_that_cannot_charge_or_fire_are_refused(overrides, match):
  with pytest.raises(UserError, match=match) as e:
    neurons.resolve_spec("dsatgo", **overrides)
  assert "\n" not in str(e.value)


def test_hard_reset_at_or_above_threshold_is_refused():
  with pytest.raises(UserError, match="v_reset < threshold"):
    neurons.validate_spec(neurons.NeuronSpec(reset="hard", v_reset=1.0, threshold=1.0))


def test_official_dsatgo_lif_variant_is_an_override():
  """DS-ATGO's code also offers ``LIF(decay 0.2)``: ``neuron.charge=lif, neuron.tau=1.25``."""
  spec = neurons.resolve_spec("dsatgo", charge="lif", tau=1.25)
  assert neurons.lif_decay(spec) == pytest.approx(0.2)
  layer = layers.SpikingNeuron(spec, T)
  assert layer.decay_logit is None and layer.theta_ema is not None
