"""NNX neuron layer: parameters it owns, PN statistics it returns, gradients to rho and w."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfsnn_jax.neuron import layers, equations as neurons
from cfsnn_jax.training import losses


def test_parameters_by_surrogate_mode():
  T = 4
  per_step = layers.SpikingNeuron(neurons.resolve_spec("cf"), T)
  chex.assert_shape(per_step.rho[...], (T,))
  np.testing.assert_allclose(per_step.alpha_T(), np.full(T, 4.0), rtol=1e-5)
  per_layer = layers.SpikingNeuron(neurons.resolve_spec("cf", surrogate_mode="per_layer"), T)
  chex.assert_shape(per_layer.rho[...], ())
  fixed = layers.SpikingNeuron(neurons.resolve_spec("lif", surrogate_mode="fixed"), T)
  assert fixed.rho is None and not nnx.state(fixed, nnx.Param)
  plif = layers.SpikingNeuron(neurons.resolve_spec("plif", decay_init=0.2), T)
  np.testing.assert_allclose(plif.decay(), 0.2, rtol=1e-5)


def test_aux_statistics_match_potentials():
  T = 3
  neuron = layers.SpikingNeuron(neurons.resolve_spec("lif", surrogate_mode="fixed"), T)
  x = jax.random.normal(jax.random.key(0), (T, 6, 5)) * 2
  S, aux = neuron(x)
  _, H, _ = neurons.run_neuron(x, neuron.spec, alpha_T=neuron.alpha_T(), decay=0.5)
  np.testing.assert_allclose(aux.h_pos_T, np.maximum(H, 0).mean((1, 2)), rtol=1e-6)
  np.testing.assert_allclose(aux.h_neg_T, np.maximum(-H, 0).mean((1, 2)), rtol=1e-6)
  np.testing.assert_allclose(aux.rate_T, np.abs(S).mean((1, 2)), rtol=1e-6)


def test_rho_and_plif_decay_receive_gradients_through_pn_and_task():
  T = 4
  neuron = layers.SpikingNeuron(neurons.resolve_spec("cf", charge="plif"), T)
  graphdef, params = nnx.split(neuron, nnx.Param)
  x = jax.random.normal(jax.random.key(1), (T, 16, 8)) + 1.0
  w = jax.random.normal(jax.random.key(2), (T, 16, 8))

  def loss(params):
    m = nnx.merge(graphdef, params)
    S, aux = m(x)
    return jnp.sum(S * w) + losses.pn_loss(layers.collect_aux([aux]))

  g = jax.grad(loss)(params)
  chex.assert_shape(g["rho"][...], (T,))
  assert np.all(np.abs(np.asarray(g["rho"][...])) > 0)
  assert abs(float(g["decay_logit"][...])) > 0


def test_adaptive_threshold_ema_and_eval():
  T = 2
  neuron = layers.SpikingNeuron(neurons.resolve_spec("dsatgo"), T)
  x = jax.random.normal(jax.random.key(3), (T, 32, 4)) + 0.5
  _, aux = neuron(x)
  # first step of DS-ATGO: theta_1 = mean(H_1) + std(H_1) with H_1 = x_1
  h1 = np.asarray(x[0])
  np.testing.assert_allclose(aux.theta_T[0], h1.mean() + h1.std(ddof=1), rtol=1e-5)
  np.testing.assert_allclose(neuron.theta_ema[...], 0.9 * 1.0 + 0.1 * np.asarray(aux.theta_T),
                             rtol=1e-5)
  neuron.eval()
  ema = np.asarray(neuron.theta_ema[...])
  _, aux_eval = neuron(x)
  np.testing.assert_allclose(aux_eval.theta_T, ema, rtol=1e-6)
  np.testing.assert_array_equal(neuron.theta_ema[...], ema)  # no update in eval


def test_probe_sows_potentials_only_when_asked():
  from cfsnn_jax.models.mlp import SpikingMLP
  factory = layers.NeuronFactory(neurons.resolve_spec("cf"), 3)
  model = SpikingMLP(input_shape=(4,), num_classes=2, hidden=(5, 6), neuron=factory,
                     rngs=nnx.Rngs(0))
  x = jnp.ones((7, 4))
  model(x)
  assert not nnx.state(model, nnx.Intermediate)
  model.set_attributes(probe=True)
  _, inter = nnx.capture(model, nnx.Intermediate)(x)
  shapes = sorted(v[0].shape for path, v in nnx.to_flat_state(inter)
                  if path[-1] == "potential_TB")
  assert shapes == [(3, 7, 5), (3, 7, 6)]
