"""Model zoo (ResNets, VGGs, Spikformer, text Transformer) on tiny widths.

Shapes and layer counts are checked by tracing only (``jax.eval_shape``); values (spike
levels, causality, BN modes, T = 1) by a few small jitted runs.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfsnn_jax import models
from cfsnn_jax.neuron import layers, equations as neurons

K = 5  # classes
B = 2  # batch


def rngs():
  # The rbg PRNG compiles its initialisers ~4x faster on CPU than threefry: the tests build
  # many tiny models of distinct shapes, and eager init compiles once per shape.
  return nnx.Rngs(jax.random.key(0, impl="rbg"))


def factory(name="cf", T=4, **overrides):
  return layers.NeuronFactory(neurons.resolve_spec(name, **overrides), T)


# Tiny versions of every registered model: (registry name, kwargs, static_input).
TINY = {
    "resnet19": ("resnet19", dict(input_shape=(8, 8, 3), widths=(8, 8, 16), head_hidden=8,
                                  stem_width=8), True),
    "resnet19_sew": ("resnet19", dict(input_shape=(8, 8, 3), widths=(8, 8, 16), head_hidden=8,
                                      stem_width=8,
                                      residual="sew_add"), True),
    "resnet20": ("resnet20", dict(input_shape=(8, 8, 3), widths=(8, 8, 16)), True),
    "resnet18": ("resnet18", dict(input_shape=(8, 8, 3), widths=(8, 8, 16, 16)), True),
    "vggsnn": ("vggsnn", dict(input_shape=(16, 16, 2),
                              layout=(8, 8, "A", 8, 8, "A", 8, 8, "A", 8, 8, "A")), False),
    "vgg_cifar": ("vgg_cifar", dict(input_shape=(32, 32, 3),
                                    layout=(8, "A", 8, "A", 8, 8, "A", 8, 8, "A", 8, 8, "A")),
                  True),
    "spikformer": ("spikformer", dict(input_shape=(8, 8, 3), embed_dim=16, depth=2,
                                      num_heads=2), True),
    "spikformer_sdsa": ("spikformer", dict(input_shape=(8, 8, 3), embed_dim=16, depth=2,
                                           num_heads=2, attention="sdsa"), True),
    "text": ("text_transformer", dict(input_shape=(6,), embed_dim=16, depth=2, num_heads=2,
                                      vocab_size=30, max_len=8), True),
}
# Spiking layers of each tiny model: stem + 2 per block (+1 per SEW downsample) + FC, etc.
NUM_SPIKING_LAYERS = {
    "resnet19": 1 + 2 * 8 + 1, "resnet19_sew": 1 + 2 * 8 + 2 + 1, "resnet20": 1 + 2 * 9,
    "resnet18": 1 + 2 * 8, "vggsnn": 8, "vgg_cifar": 8, "spikformer": 5 + 2 * 7,
    "spikformer_sdsa": 5 + 2 * 7, "text": 1 + 2 * 7,
}


def build(key, neuron, *, T=None, per_step_bn=False, static_input=None, abstract=False, **kw):
  name, base, static = TINY[key]
  kwargs = dict(base, **kw)
  static = static if static_input is None else static_input
  ctor = lambda: models.MODELS[name](num_classes=K, neuron=neuron, static_input=static,
                                     per_step_bn=per_step_bn, rngs=rngs(), **kwargs)
  return nnx.eval_shape(ctor) if abstract else ctor()


def example_input(key, T, seed=0, batch=B, static_input=None):
  name, kw, static = TINY[key]
  static = static if static_input is None else static_input
  rng = np.random.default_rng(seed)
  if name == "text_transformer":
    tokens = rng.integers(1, kw["vocab_size"], (batch, kw["input_shape"][0]))
    tokens[0, -2:] = 0  # padding
    return jnp.asarray(tokens, jnp.int32)
  lead = (batch,) if static else (T, batch)
  return jnp.asarray(rng.normal(size=lead + kw["input_shape"]) * 2.0, jnp.float32)


def abstract_call(model, x):
  graphdef, state = nnx.split(model)
  return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s, copy=True)(x), state, x)


def run_probed(model, x):
  """Jitted forward with the neurons' analysis probe on; returns logits, aux and a dict
  ``{layer path: spikes_TB}`` of every spiking layer."""
  model.set_attributes(probe=True)
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state, x):
    m = nnx.merge(graphdef, state, copy=True)
    (logits, aux), inter = nnx.capture(m, nnx.Intermediate)(x)
    spikes = {"/".join(map(str, path[:-1])): v[0]
              for path, v in nnx.to_flat_state(inter) if path[-1] == "spikes_TB"}
    return logits, aux, spikes

  return f(state, x)


@pytest.mark.parametrize("key", sorted(TINY))
def test_shapes_and_layer_counts_by_tracing(key):
  T = 3
  model = build(key, factory("cf", T), abstract=True)
  logits, aux = abstract_call(model, example_input(key, T))
  chex.assert_shape(logits, (T, B, K))
  for field in aux:
    chex.assert_shape(field, (NUM_SPIKING_LAYERS[key], T))


SMALL = {"resnet19_sew": dict(stage_blocks=(1, 1, 1)), "spikformer": dict(depth=1),
         "spikformer_sdsa": dict(depth=1), "text": dict(depth=1)}  # fewer blocks: faster jit


@pytest.mark.parametrize("key,neuron", [
    ("resnet19_sew", "cf"), ("resnet20", "cf_signed"), ("vggsnn", "dsatgo"),
    ("spikformer", "plif"), ("spikformer_sdsa", "cf"), ("text", "lif"),
])
def test_spikes_are_integer_levels_in_every_layer(key, neuron):
  T = 4
  nf = factory(neuron, T)
  model = build(key, nf, **SMALL.get(key, {}))
  logits, aux, spikes = run_probed(model, example_input(key, T))
  chex.assert_shape(logits, (T, B, K))
  chex.assert_tree_all_finite(logits)
  # aux has one row per spiking layer: the same firing rates as the probed spikes.
  assert len(spikes) == aux.rate_T.shape[0]
  rates = sorted(tuple(np.abs(np.asarray(s)).reshape(T, -1).mean(1)) for s in spikes.values())
  np.testing.assert_allclose(rates, sorted(map(tuple, np.asarray(aux.rate_T))), rtol=1e-5,
                             atol=1e-7)
  D, signed = nf.spec.levels, nf.spec.signed
  all_s = np.concatenate([np.asarray(s).ravel() for s in spikes.values()])
  np.testing.assert_array_equal(all_s, np.round(all_s))
  assert all_s.max() <= D and all_s.min() >= (-D if signed else 0)
  assert all_s.max() >= 1  # the model fires at all
  if D > 1:
    assert all_s.max() > 1  # multi-level firing reaches levels above 1
  if signed:
    assert all_s.min() < 0


@pytest.mark.parametrize("key,neuron,per_step_bn", [
    ("resnet19_sew", "lif", True), ("vggsnn", "cf", False), ("spikformer", "dsatgo", True),
])
def test_causal_over_time_through_gradients(key, neuron, per_step_bn):
  """d logits_t / d x_t' == 0 for t' > t (event input). Joint T*B BN mixes steps through its
  batch statistics in training mode, so that case runs in eval mode."""
  T = 3
  model = build(key, factory(neuron, T), per_step_bn=per_step_bn, static_input=False,
                **SMALL.get(key, {}))
  if not per_step_bn:
    model.eval()
  graphdef, state = nnx.split(model)
  x = example_input(key, T, batch=1, static_input=False)

  @jax.jit
  def jac(x):
    return jax.jacrev(lambda x: nnx.merge(graphdef, state, copy=True)(x)[0].sum(axis=(1, 2)))(x)

  J = np.abs(np.asarray(jac(x))).reshape(T, T, -1).sum(-1)  # [t_out, t_in]
  np.testing.assert_array_equal(np.triu(J, k=1), 0.0)
  assert np.all(np.diag(J) > 0)
  assert np.tril(J, k=-1).sum() > 0  # the membrane carries earlier inputs forward


@pytest.mark.parametrize("key", ["resnet19_sew", "vggsnn", "spikformer_sdsa", "text"])
def test_bfloat16_parameters_give_bfloat16_logits(key):
  """Mixed precision (train.py casts the parameters): no layer silently promotes to float32."""
  T = 2
  model = build(key, factory("cf", T), abstract=True)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16), params)
  x = example_input(key, T)
  x = x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x
  logits, _ = jax.eval_shape(lambda p, r, x: nnx.merge(graphdef, p, r, copy=True)(x),
                             params, rest, x)
  assert logits.dtype == jnp.bfloat16


def test_per_step_and_joint_bn_both_run():
  T = 3
  x = example_input("vgg_cifar", T)
  outs = {}
  for per_step in (False, True):
    model = build("vgg_cifar", factory("cf", T), per_step_bn=per_step)
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, x):
      m = nnx.merge(graphdef, state, copy=True)
      logits, _ = m(x)
      return logits, nnx.state(m)

    logits, new_state = f(state, x)
    chex.assert_tree_all_finite(logits)
    nnx.update(model, new_state)
    bn = model.norms[0].bn
    chex.assert_shape(bn.mean[...], (T, 8) if per_step else (8,))
    assert np.abs(np.asarray(bn.mean[...])).sum() > 0  # statistics were updated
    outs[per_step] = np.asarray(logits)
  assert not np.allclose(outs[False], outs[True])


@pytest.mark.parametrize("key", ["resnet19_sew", "spikformer"])
def test_jits_with_one_step(key):
  model = build(key, factory("cf", 1), **SMALL.get(key, {}))
  logits, aux = nnx.jit(lambda m, x: m(x))(model, example_input(key, 1))
  chex.assert_shape(logits, (1, B, K))
  chex.assert_shape(aux.rate_T, (aux.rate_T.shape[0], 1))
  chex.assert_tree_all_finite(logits)


def test_text_padding_does_not_change_the_prediction():
  """Padding is masked out of attention keys and the token mean: eval-mode logits of a
  sentence are the same with or without trailing padding."""
  T = 2
  model = build("text", factory("lif", T), max_len=10, depth=1)
  model.eval()
  tokens = jnp.asarray([[3, 7, 9, 4]], jnp.int32)
  padded = jnp.concatenate([tokens, jnp.zeros((1, 3), jnp.int32)], axis=1)
  f = nnx.jit(lambda m, x: m(x)[0])
  np.testing.assert_allclose(f(model, tokens), f(model, padded), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,input_shape,match", [
    ("resnet19", (30, 30, 3), "divisible by 4, got 30x30"),
    ("resnet19", (32, 32), "needs HWC input"),
    ("vggsnn", (40, 40, 2), "divisible by 16, got 40x40"),
    ("spikformer", (30, 32, 3), "divisible by 4, got 30x32"),
])
def test_impossible_image_size_fails_in_init(name, input_shape, match):
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda: models.MODELS[name](
        input_shape=input_shape, num_classes=K, neuron=factory("lif", 2), static_input=True,
        rngs=nnx.Rngs(0)))


def test_input_not_matching_the_built_shape_fails_before_compilation():
  model = build("resnet19", factory("lif", 2), abstract=True)
  with pytest.raises(ValueError,
                     match=r"built for input \[B, 8, 8, 3\], got shape \(2, 16, 16, 3\)"):
    abstract_call(model, jnp.zeros((2, 16, 16, 3)))
  events = build("vggsnn", factory("lif", 2), abstract=True)
  with pytest.raises(ValueError, match=r"\[T=2, B, 16, 16, 2\], got shape \(3, 2, 16, 16, 2\)"):
    abstract_call(events, jnp.zeros((3, 2, 16, 16, 2)))


def test_too_long_token_sequence_fails_with_one_line():
  model = build("text", factory("lif", 2), abstract=True)  # max_len = 8
  with pytest.raises(ValueError, match="token sequence of length 9 exceeds max_len=8"):
    abstract_call(model, jnp.ones((2, 9), jnp.int32))
  with pytest.raises(ValueError, match="integer token ids"):
    abstract_call(model, jnp.ones((2, 6), jnp.float32))
  with pytest.raises(ValueError, match="sequence length 12 exceeds max_len=8"):
    build("text", factory("lif", 2), abstract=True, input_shape=(12,))


def test_bad_kwargs_fail_with_choices():
  with pytest.raises(ValueError, match="valid choices: standard, sew_add"):
    build("resnet19", factory("lif", 2), abstract=True, residual="sew_iand")
  with pytest.raises(ValueError, match="valid choices: ssa, sdsa"):
    build("spikformer", factory("lif", 2), abstract=True, attention="softmax")


def _count(name, num_classes, input_shape, **kw):
  return models.count_params(nnx.eval_shape(lambda: models.MODELS[name](
      input_shape=input_shape, num_classes=num_classes, neuron=factory("cf", 4),
      static_input=True, rngs=nnx.Rngs(0), **kw)))


def test_full_size_parameter_counts():
  r19 = _count("resnet19", 100, (32, 32, 3))
  assert 12.5e6 <= r19 <= 12.8e6, r19
  assert _count("resnet19", 100, (32, 32, 3), residual="sew_add") > r19  # + 2 down neurons
  spikformer = _count("spikformer", 10, (32, 32, 3))
  assert 9.2e6 <= spikformer <= 9.4e6, spikformer
  assert 0.26e6 <= _count("resnet20", 10, (32, 32, 3)) <= 0.28e6  # He et al.: 0.27 M
  assert 11.1e6 <= _count("resnet18", 200, (64, 64, 3)) <= 11.4e6


def test_registry_builds_through_build_model():
  cfg = dict(name="resnet20", widths=(4, 4, 8), stage_blocks=(1, 1, 1))
  model = nnx.eval_shape(lambda: models.build_model(
      cfg, factory("lif", 2), input_shape=(8, 8, 3), num_classes=K, static_input=True,
      rngs=nnx.Rngs(0)))
  logits, _ = abstract_call(model, jnp.zeros((B, 8, 8, 3)))
  chex.assert_shape(logits, (2, B, K))
  text = nnx.eval_shape(lambda: models.build_model(
      dict(name="text_transformer", embed_dim=16, depth=1, num_heads=2), factory("lif", 2),
      input_shape=(6,), num_classes=2, static_input=True, rngs=nnx.Rngs(0), vocab_size=11))
  assert text.embed.embedding.shape == (11, 16)


def _count_spec(spec_name, num_classes, surrogate_mode=None, **kw):
  spec = neurons.resolve_spec(spec_name, surrogate_mode=surrogate_mode)
  return models.count_params(nnx.eval_shape(lambda: models.MODELS["resnet19"](
      input_shape=(32, 32, 3), num_classes=num_classes, neuron=layers.NeuronFactory(spec, 4),
      static_input=True, rngs=nnx.Rngs(0), **kw)))


def test_resnet19_counts_match_their_sources_exactly():
  """docs/MODELS.md: the TET layout (stem 64, conv1x1 + BN shortcut in the first block) is
  the default; the DS-ATGO code's stem 128 is a field."""
  assert _count_spec("lif", 100, "fixed") == 12_653_988  # TET, neurons without parameters
  assert _count_spec("lif", 10, "fixed") == 12_630_858  # TET's published 12.63 M
  assert _count_spec("lif", 100) == 12_653_988 + 18 * 4  # + per-step LSG rho, T = 4
  assert _count_spec("lif", 100, stem_width=128) == 12_721_196  # stem 128, standard residual
  assert _count_spec("lif", 100, "fixed", stem_width=128) == 12_721_196 - 18 * 4
  assert _count_spec("dsatgo", 100, stem_width=128, residual="sew_add") == 12_721_144
  from cfsnn_jax.configs import cifar100, dsatgo_cifar10, dsatgo_cifar100
  assert dsatgo_cifar10.get_config().model.stem_width == 128
  assert dsatgo_cifar100.get_config().model.stem_width == 128
  assert "stem_width" not in cifar100.get_config().model  # the TET default
