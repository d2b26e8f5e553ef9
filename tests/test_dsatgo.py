"""DS-ATGO (METHOD.md §4): adaptive threshold, EMA state, dynamic surrogate width."""

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cfsnn_jax import data
from cfsnn_jax.neuron import layers, equations as neurons
from cfsnn_jax.training import checkpointing, steps, loop as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import mnist5k as mnist5k_config  # noqa: E402


def test_threshold_is_mean_plus_unbiased_std():
  h = jnp.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]])  # mean 3.5, var_unbiased 6
  np.testing.assert_allclose(neurons.adaptive_threshold(h, 1.0), 3.5 + math.sqrt(6.0),
                             rtol=1e-6)
  np.testing.assert_allclose(neurons.adaptive_threshold(h, 0.5), 0.5 * (3.5 + math.sqrt(6.0)),
                             rtol=1e-6)
  # no gradient flows through theta
  g = jax.grad(lambda h: neurons.adaptive_threshold(h, 1.0))(h)
  assert not np.any(np.asarray(g))


def test_thresholds_follow_each_step_in_the_scan():
  spec = neurons.resolve_spec("dsatgo")
  x = jax.random.normal(jax.random.key(0), (3, 64, 5)) + 0.3
  S, H, theta = neurons.run_neuron(x, spec, alpha_T=jnp.ones(3), decay=0.2)
  for t in range(3):
    h = np.asarray(H[t])
    np.testing.assert_allclose(theta[t], h.mean() + h.std(ddof=1), rtol=1e-5)
    np.testing.assert_array_equal(S[t], (h >= theta[t]).astype(np.float32))


@pytest.mark.parametrize("delta", [0.0, 0.3, 0.9, 1.0, 1.2, 2.5])
def test_width_rule(delta):
  k = 1.0
  want = k * (1 - math.tanh(1 - delta)) if delta < 1 else k * (1 + math.tanh(delta - 1))
  np.testing.assert_allclose(neurons.dynamic_width(jnp.float32(delta), k), want, rtol=1e-6)
  np.testing.assert_allclose(neurons.dynamic_width(jnp.float32(delta), 2.0), 2 * want,
                             rtol=1e-6)


@pytest.mark.parametrize("stat", ["std", "threshold"])
def test_dynamic_rectangular_surrogate_uses_width(stat):
  spec = neurons.resolve_spec("dsatgo", dynamic_stat=stat)
  x = jax.random.normal(jax.random.key(1), (1, 4096)) * 0.7 + 0.4
  h = np.asarray(x[0])
  theta = h.mean() + h.std(ddof=1)
  delta = h.std(ddof=1) if stat == "std" else theta
  width = float(neurons.dynamic_width(jnp.float32(delta), 1.0))
  g = jax.grad(lambda x: neurons.run_neuron(x, spec, alpha_T=jnp.ones(1), decay=0.2)[0].sum())(x)
  inside = np.abs(h - theta) < width / 2
  np.testing.assert_allclose(np.asarray(g[0])[inside], 1.0 / width, rtol=1e-5)
  assert np.all(np.asarray(g[0])[~inside] == 0)


def test_ema_update_and_eval_use():
  T = 2
  layer = layers.SpikingNeuron(neurons.resolve_spec("dsatgo"), T)
  xs = [jax.random.normal(jax.random.key(i), (T, 32, 3)) + 0.5 for i in range(3)]
  ema = np.ones(T)
  for x in xs:
    _, aux = layer(x)
    ema = 0.9 * ema + 0.1 * np.asarray(aux.theta_T)
  np.testing.assert_allclose(layer.theta_ema[...], ema, rtol=1e-5)
  layer.eval()
  S, aux = layer(xs[0])
  np.testing.assert_allclose(aux.theta_T, ema, rtol=1e-6)
  _, H, _ = neurons.run_neuron(xs[0], layer.spec, alpha_T=jnp.ones(T), decay=0.2,
                               theta_T=jnp.asarray(ema), training=False)
  np.testing.assert_array_equal(S[0], (np.asarray(H[0]) >= ema[0]).astype(np.float32))


def _thresholds_on(devices, x):
  layer = layers.SpikingNeuron(neurons.resolve_spec("dsatgo"), x.shape[0])
  graphdef, state = nnx.split(layer)
  mesh = steps.make_mesh(devices)
  x = jax.device_put(x, NamedSharding(mesh, P(None, "data")))
  state = jax.device_put(state, NamedSharding(mesh, P()))

  @jax.jit
  def f(state, x):
    m = nnx.merge(graphdef, state)
    _, aux = m(x)
    return aux.theta_T, nnx.state(m)
  theta, new_state = f(state, x)
  return np.asarray(theta), np.asarray(new_state["theta_ema"][...])


def test_identical_thresholds_on_one_and_four_devices():
  x = jax.random.normal(jax.random.key(7), (3, 16, 6)) * 1.3 + 0.2
  one = _thresholds_on(jax.devices()[:1], x)
  four = _thresholds_on(jax.devices(), x)
  np.testing.assert_allclose(one[0], four[0], rtol=1e-6)
  np.testing.assert_allclose(one[1], four[1], rtol=1e-6)


def test_checkpoint_round_trip_keeps_ema(tmp_workdir):
  config = mnist5k_config.get_config("tiny")
  config.neuron.name = "dsatgo"
  summary = train.train_and_evaluate(config, tmp_workdir)
  trained_rest = summary["state"]["rest"]
  emas = [np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(trained_rest)
          if "theta_ema" in jax.tree_util.keystr(p)]
  assert emas and not np.allclose(emas[0], 1.0)  # moved away from its initial 1.0
  info = data.load_dataset(config).info
  _, _, fresh, _, _ = steps.create_train_state(config, info, 4)
  restored, step = checkpointing.restore_latest(checkpointing.make_manager(tmp_workdir),
                                                fresh, None)
  assert step == 4
  got = [np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(restored["rest"])
         if "theta_ema" in jax.tree_util.keystr(p)]
  for a, b in zip(emas, got):
    np.testing.assert_array_equal(a, b)
