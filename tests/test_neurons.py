"""Neuron family (METHOD.md §1–§2): forward against hand-computed sequences, the custom_vjp
against jax.grad of the smooth primitive, alpha gradients, stability, jit, causality."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfsnn_jax.neuron import equations as N


def run(x_T, name="lif", alpha=4.0, decay=None, **overrides):
  spec = N.resolve_spec(name, **overrides)
  x_TB = jnp.asarray(x_T, jnp.float32).reshape(len(x_T), 1)
  T = x_TB.shape[0]
  decay = N.lif_decay(spec) if decay is None else decay
  S, H, theta = N.run_neuron(x_TB, spec, alpha_T=jnp.full((T,), alpha), decay=decay)
  return np.asarray(S[:, 0]), np.asarray(H[:, 0]), np.asarray(theta)


# ----------------------------------------------------------------------------- forward

def test_lif_tau2_threshold1_hard_reset():
  # H_t = 0.5 U_{t-1} + x_t; S = [H >= 1]; U = 0 after a spike.
  S, H, _ = run([1.5, 0.2, 0.8, 1.2, 0.0], "lif", tau=2.0, threshold=1.0, reset="hard")
  np.testing.assert_allclose(H, [1.5, 0.2, 0.9, 1.65, 0.0], atol=1e-6)
  np.testing.assert_array_equal(S, [1, 0, 0, 1, 0])


def test_lif_decay_input_form():
  # SpikingJelly decay_input: H_t = 0.5 U_{t-1} + 0.5 x_t.
  S, H, _ = run([2.4, 1.0, 1.0, 3.0], "lif", tau=2.0, decay_input=True)
  # H1 = 1.2 -> spike, U = 0; H2 = 0.5 -> U = .5; H3 = .25 + .5 = .75; H4 = .375 + 1.5 = 1.875
  np.testing.assert_allclose(H, [1.2, 0.5, 0.75, 1.875], atol=1e-6)
  np.testing.assert_array_equal(S, [1, 0, 0, 1])


def test_if_soft_reset():
  # IF: lambda = 1; soft reset subtracts theta = 1.
  S, H, _ = run([0.6, 0.6, 0.6, 0.6, 2.5], "if", reset="soft")
  # H: .6, 1.2 (fire, U=.2), .8, 1.4 (fire, U=.4), 2.9 (D=1: fire once, U=1.9)
  np.testing.assert_allclose(H, [0.6, 1.2, 0.8, 1.4, 2.9], atol=1e-6)
  np.testing.assert_array_equal(S, [0, 1, 0, 1, 1])


def test_plif_uses_given_decay():
  S, H, _ = run([0.5, 0.5, 0.5], "plif", decay=0.2)
  np.testing.assert_allclose(H, [0.5, 0.6, 0.62], atol=1e-6)
  np.testing.assert_array_equal(S, [0, 0, 0])


def test_cf_unsigned_levels_soft_reset():
  # CF: D = 4, soft reset, LIF tau 2: the remainder circulates.
  S, H, _ = run([4.5, 0.6, 2.4, 3.6, 0.0], "cf")
  np.testing.assert_allclose(H, [4.5, 0.85, 2.825, 4.0125, 0.00625], atol=1e-5)
  np.testing.assert_array_equal(S, [4, 0, 2, 4, 0])


def test_cf_saturates_at_D_and_keeps_residual():
  S, H, _ = run([7.3, 0.0], "cf", levels=4)
  # fires D = 4 times, U = 3.3; next H = 1.65 -> fires once
  np.testing.assert_array_equal(S, [4, 1])
  np.testing.assert_allclose(H, [7.3, 1.65], atol=1e-5)


def test_cf_signed_ternary_and_multilevel():
  S, H, _ = run([-2.5, 0.4, 1.2], "cf_signed", levels=4)
  # H1 = -2.5 -> S = -2, U = -0.5; H2 = -.25 + .4 = .15 -> 0; H3 = .075 + 1.2 = 1.275 -> 1
  np.testing.assert_array_equal(S, [-2, 0, 1])
  np.testing.assert_allclose(H, [-2.5, 0.15, 1.275], atol=1e-5)
  S1, _, _ = run([-1.5, 3.0], "cf_signed", levels=1)
  np.testing.assert_array_equal(S1, [-1, 1])


def test_hard_reset_multilevel_resets_to_v_reset():
  S, H, _ = run([2.5, 0.4], "cf", reset="hard")
  np.testing.assert_array_equal(S, [2, 0])
  np.testing.assert_allclose(H, [2.5, 0.4], atol=1e-6)  # U_1 = 0


def test_threshold_scales_levels():
  S, _, _ = run([5.0], "cf", threshold=2.0)
  np.testing.assert_array_equal(S, [2])


def test_detach_reset_changes_gradient_not_forward():
  x = jnp.array([[1.3], [0.9], [0.8]])
  def f(detach):
    spec = N.resolve_spec("lif", detach_reset=detach)
    return lambda x: N.run_neuron(x, spec, alpha_T=jnp.full(3, 4.0), decay=0.5)[0].sum()
  np.testing.assert_array_equal(
      N.run_neuron(x, N.resolve_spec("lif", detach_reset=True), alpha_T=jnp.full(3, 4.),
                   decay=0.5)[0],
      N.run_neuron(x, N.resolve_spec("lif"), alpha_T=jnp.full(3, 4.), decay=0.5)[0])
  g_att, g_det = jax.grad(f(False))(x), jax.grad(f(True))(x)
  assert not np.allclose(g_att, g_det)


# ----------------------------------------------------------------------------- custom_vjp

@pytest.mark.parametrize("surrogate,levels,signed", list(itertools.product(
    N.SURROGATES, [1, 3], [False, True])))
def test_spike_vjp_equals_grad_of_smooth_primitive(surrogate, levels, signed):
  # Points away from the kinks of the piecewise families so both sides are well defined.
  h = jnp.linspace(-3.37, 3.41, 57)
  theta, alpha = jnp.float32(0.9), jnp.float32(1.3)
  ct = jax.random.normal(jax.random.key(0), h.shape)

  def custom(h, theta, alpha):
    return jnp.vdot(ct, N.spike(h, theta, alpha, levels, signed, surrogate))

  def smooth(h, theta, alpha):
    return jnp.vdot(ct, N.smooth_staircase(h, theta, alpha, levels, signed, surrogate))

  got = jax.grad(custom, argnums=(0, 1, 2))(h, theta, alpha)
  want = jax.grad(smooth, argnums=(0, 1, 2))(h, theta, alpha)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # and the forward is the exact staircase, not the smooth one
  np.testing.assert_array_equal(N.spike(h, theta, alpha, levels, signed, surrogate),
                                N.staircase(h, theta, levels, signed))


def test_surrogate_is_derivative_of_primitive():
  v = jnp.linspace(-2.1, 2.3, 41)
  for name in N.SURROGATES:
    for alpha in (0.7, 4.0):
      g = jax.vmap(jax.grad(lambda v: N.surrogate_primitive(name, v, alpha)))(v)
      np.testing.assert_allclose(N.surrogate_grad(name, v, alpha), g, atol=1e-5)


def test_surrogate_table_values():
  a = 2.0
  np.testing.assert_allclose(N.surrogate_grad("sigmoid", 0.0, a), a * 0.25)
  np.testing.assert_allclose(N.surrogate_grad("atan", 0.0, a), a / 2)
  np.testing.assert_allclose(N.surrogate_grad("rectangular", 0.2, a), a)
  np.testing.assert_allclose(N.surrogate_grad("rectangular", 0.3, a), 0.0)
  np.testing.assert_allclose(N.surrogate_grad("triangle", 0.25, a), a * 0.5)


# ----------------------------------------------------------------------------- alpha / LSG

@pytest.mark.parametrize("name", ["lif", "cf", "cf_signed"])
def test_alpha_gradient_per_step(name):
  spec = N.resolve_spec(name)
  T = 4
  x = jax.random.normal(jax.random.key(1), (T, 32, 8)) * 1.5 + 0.5
  w = jax.random.normal(jax.random.key(2), (T, 32, 8))

  def loss(alpha_T):
    S, _, _ = N.run_neuron(x, spec, alpha_T=alpha_T, decay=N.lif_decay(spec))
    return jnp.sum(S * w)

  g = jax.grad(loss)(jnp.full((T,), spec.alpha))
  chex.assert_shape(g, (T,))
  assert np.all(np.abs(g) > 0), g
  assert len(np.unique(np.round(np.asarray(g), 6))) == T, g


def test_rho_softplus_roundtrip():
  for a0 in (0.5, 1.0, 4.0, 30.0):
    np.testing.assert_allclose(N.alpha_from_rho(N.rho_for_alpha(a0)), a0, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("surrogate", list(N.SURROGATES))
def test_finite_for_large_alpha(dtype, surrogate):
  x = (jax.random.normal(jax.random.key(3), (4, 64)) * 30).astype(dtype)
  for name in ("lif", "cf_signed"):
    spec = N.resolve_spec(name, surrogate=surrogate)

    def loss(x, alpha_T):
      S, H, _ = N.run_neuron(x, spec, alpha_T=alpha_T, decay=0.5)
      return jnp.sum(S.astype(jnp.float32)) + jnp.sum(H.astype(jnp.float32)) * 1e-3

    val, (gx, ga) = jax.value_and_grad(loss, argnums=(0, 1))(x, jnp.full((4,), 100.0))
    assert np.isfinite(float(val))
    assert np.all(np.isfinite(np.asarray(gx, np.float32)))
    assert np.all(np.isfinite(np.asarray(ga)))
    assert gx.dtype == dtype and ga.dtype == jnp.float32


# ----------------------------------------------------------------------------- jit, causality

@pytest.mark.parametrize("name", list(N.NEURON_PRESETS))
def test_jit_and_eager_agree(name):
  spec = N.resolve_spec(name)
  x = jax.random.normal(jax.random.key(4), (5, 8, 3)) * 2

  def f(x, alpha_T):
    S, H, th = N.run_neuron(x, spec, alpha_T=alpha_T, decay=0.4)
    return jnp.sum(S * x) + jnp.sum(H), (S, H, th)

  a = jnp.full((5,), spec.alpha)
  eager = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, a)
  jitted = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, a)
  for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(e, j, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lif", "cf", "cf_signed", "dsatgo"])
def test_causality_through_gradients(name):
  spec = N.resolve_spec(name)
  T = 5
  x = jax.random.normal(jax.random.key(5), (T, 16)) + 0.8
  for t in range(T):
    def out_t(x):
      S, H, _ = N.run_neuron(x, spec, alpha_T=jnp.full((T,), spec.alpha), decay=0.5)
      return jnp.sum(H[t]) + jnp.sum(S[t])
    g = jax.grad(out_t)(x)
    assert np.all(np.asarray(g[t + 1:]) == 0), (t, g)
    assert np.any(np.asarray(g[t]) != 0)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(name="lfi"), "valid choices: if, lif, plif, cf"),
    (dict(name="lif", surrogate="sigmoidal"), "valid choices: sigmoid, atan"),
    (dict(name="lif", reset="soft-ish"), "valid choices: soft, hard"),
    (dict(name="lif", surrogate_mode="learned"), "valid choices: per_step"),
    (dict(name="cf", levels=0), "levels D must be an integer >= 1"),
    (dict(name="lif", threshold=0.0), "threshold must be > 0"),
    (dict(name="lif", threshold=-1.0), "threshold must be > 0"),
    (dict(name="lif", alpha=0.0), "alpha must be > 0"),
])
def test_bad_neuron_settings(kwargs, match):
  name = kwargs.pop("name")
  with pytest.raises(ValueError, match=match) as e:
    N.resolve_spec(name, **kwargs)
  assert "\n" not in str(e.value)


def test_bad_num_steps():
  for T in (0, -1, 1.5):
    with pytest.raises(ValueError, match="num_steps T must be an integer >= 1"):
      N.validate_num_steps(T)
