"""Losses (METHOD.md §3, §5) against hand computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from cfsnn_jax.training import losses
from cfsnn_jax.neuron.equations import NeuronStats as NeuronAux


def _ce(logits, label, eps):
  k = len(logits)
  target = np.full(k, eps / k)
  target[label] += 1 - eps
  logp = logits - np.log(np.sum(np.exp(logits)))
  return -np.sum(target * logp)


LOGITS_TBK = np.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
                       [[0.0, 1.0, 0.0], [1.5, -0.5, 2.0]]], np.float32)  # T=2, B=2, K=3
LABELS = np.array([0, 2])


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_on_time_mean(eps):
  mean = LOGITS_TBK.mean(0)
  want = np.mean([_ce(mean[b], LABELS[b], eps) for b in range(2)])
  got = losses.cross_entropy(jnp.asarray(LOGITS_TBK), jnp.asarray(LABELS), eps)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tet_loss():
  lam, phi = 0.3, 1.0
  ce = np.mean([_ce(LOGITS_TBK[t, b], LABELS[b], 0.0) for t in range(2) for b in range(2)])
  mse = np.mean((LOGITS_TBK - phi) ** 2)
  want = (1 - lam) * ce + lam * mse
  got = losses.tet_loss(jnp.asarray(LOGITS_TBK), jnp.asarray(LABELS), lam, phi)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def _aux_from_potentials(h_list, kappa=1.0):
  # h_list[l][t] is an array of potentials of layer l at step t
  def stat(f):
    return jnp.asarray([[f(np.asarray(h)) for h in layer] for layer in h_list], jnp.float32)
  return NeuronAux(h_pos_T=stat(lambda h: np.maximum(h, 0).mean()),
                   h_neg_T=stat(lambda h: np.maximum(-h, 0).mean()),
                   h_tanh_T=stat(lambda h: np.tanh(kappa * h).mean()),
                   rate_T=stat(lambda h: 0.0), theta_T=stat(lambda h: 1.0))


def test_pn_loss_mean_and_sign_variants():
  h = [[[1.0, -3.0, 2.0, 0.0], [0.5, 0.5, -0.5, -0.5]],
       [[-1.0, -1.0, -2.0, 4.0], [2.0, 2.0, 2.0, 2.0]]]
  aux = _aux_from_potentials(h)
  # layer 0: P-N = (3/4 - 3/4) = 0, (.25-.25) = 0 ; layer 1: (1 - 1) = 0, (2 - 0) = 2
  np.testing.assert_allclose(losses.pn_loss(aux, "mean"), (0 + 0 + 0 + 4) / 4, rtol=1e-6)
  tanh_means = [np.tanh(np.asarray(x)).mean() for layer in h for x in layer]
  np.testing.assert_allclose(losses.pn_loss(aux, "sign"), np.mean(np.square(tanh_means)),
                             rtol=1e-6)


def test_bad_loss_names():
  with pytest.raises(ValueError, match="valid choices: ce, tet"):
    losses.task_loss("mse", jnp.asarray(LOGITS_TBK), jnp.asarray(LABELS))
  with pytest.raises(ValueError, match="valid choices: mean, sign"):
    losses.validate_loss_config("ce", "abs")
