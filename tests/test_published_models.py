"""Our models against independent references of the published ones (``published_models.py``).

Each model is built from its config's ``model`` settings with its initial parameters, in
training mode and float64; the parameters are mapped one-to-one onto the reference's torch
layout, and both run on one batch. Layer by layer, the pre-neuron inputs must agree to float
rounding and the spikes must be equal except for *flips* (a spike that differs where the
potential is within ``tol`` of the threshold); a spike that differs anywhere else is a
structural difference and fails, naming the layer. On the chosen (flip-free) batch the
logits and every parameter's gradient of ``sum(sin(logits))`` agree as well. The neuron is the
published one: TET's LIF (our ``lif`` with the triangle surrogate of width 1, fixed) and the
DS-ATGO preset (``dsatgo``). docs/MODELS.md, "Checked against the published structure".
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import published_models as ref
from cfsnn_jax import models
from cfsnn_jax.configs import cifar10, cifar10_dvs, cifar100, dsatgo_cifar10, dsatgo_cifar100
from cfsnn_jax.neuron import equations as neurons
from cfsnn_jax.neuron import layers

T, B = 2, 2
# Flip tolerances on |potential - threshold| (docs/DECISIONS.md, "Issue 26" 6): float64
# rounding for the LIF models; the DS-ATGO neuron computes its adaptive threshold and its decay
# in float32 (METHOD.md §4.1), so its potentials carry float32 rounding.
TOL_LIF, TOL_DSATGO = 1e-9, 1e-5
# Gradients: our neuron's backward computes in float32 (METHOD.md §2.2), so each parameter's
# gradient agrees to float32 rounding of its largest element (measured: at most 2.9e-6).
GRAD_RTOL = 2e-5
TET_LIF = dict(surrogate="triangle", alpha=1.0, surrogate_mode="fixed")  # TET's ZIF, gamma 1


@dataclasses.dataclass(frozen=True)
class Case:
  config: object  # the config module whose ``model`` settings build ours
  neuron: tuple  # (preset, overrides)
  input_shape: tuple  # ours, NHWC
  num_classes: int
  static_input: bool
  shapes: object  # reference parameter shapes: fn(num_classes)
  forward: object  # reference forward
  tol: float
  count: int  # the published parameter count


CASES = {
    "tet_resnet19": Case(cifar10, ("lif", TET_LIF), (32, 32, 3), 10, True,
                         ref.tet_resnet19_shapes, ref.tet_resnet19, TOL_LIF, 12_630_858),
    "tet_vggsnn": Case(cifar10_dvs, ("lif", TET_LIF), (48, 48, 2), 10, False,
                       lambda k: ref.tet_vggsnn_shapes(k), ref.tet_vggsnn, TOL_LIF, 9_271_498),
    "dsatgo_resnet19": Case(dsatgo_cifar10, ("dsatgo", {}), (32, 32, 3), 10, True,
                            ref.dsatgo_resnet19_shapes, ref.dsatgo_resnet19, TOL_DSATGO,
                            12_698_260),
}
SEED = {"tet_resnet19": 0, "tet_vggsnn": 0, "dsatgo_resnet19": 0}  # flip-free batches


def build(case: Case, abstract=False, num_classes=None, config=None, **model_overrides):
  """Ours, from the config's model settings and the published neuron."""
  name, overrides = case.neuron
  factory = layers.NeuronFactory(neurons.resolve_spec(name, **overrides), T)
  model_cfg = dict((config or case.config).get_config().model, **model_overrides)
  ctor = lambda: models.build_model(
      model_cfg, factory, input_shape=case.input_shape,
      num_classes=num_classes or case.num_classes, static_input=case.static_input,
      rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  return nnx.eval_shape(ctor) if abstract else ctor()


# --- the parameter mapper --------------------------------------------------------------------

def _conv(k):  # HWIO -> OIHW
  return jnp.transpose(k, (3, 2, 0, 1))


def _linear(k):  # [in, out] -> torch [out, in]
  return k.T


def _same(k):
  return k


def _bn(ours, theirs):
  return [(f"{ours}/bn/scale", f"{theirs}.weight", _same),
          (f"{ours}/bn/bias", f"{theirs}.bias", _same)]


def _resnet_table(dsatgo: bool):
  """``(our path, reference name, transform)`` for every parameter, and the spiking layers
  ``(our path, reference name)`` in forward order."""
  stem = 128 if dsatgo else 64
  table = [("stem_conv/kernel", "conv1.weight", _conv)] + _bn("stem_bn", "bn1")
  spiking = [("stem_neuron", "sn1" if dsatgo else "sn_stem")]
  for j, (name, _, _, _, down) in enumerate(ref._resnet_blocks(stem)):
    b = f"blocks/{j}"
    table += [(f"{b}/conv1/kernel", f"{name}.conv1.weight", _conv),
              (f"{b}/conv2/kernel", f"{name}.conv2.weight", _conv)]
    table += _bn(f"{b}/bn1", f"{name}.bn1") + _bn(f"{b}/bn2", f"{name}.bn2")
    spiking += [(f"{b}/neuron1", f"{name}.sn1"), (f"{b}/neuron2", f"{name}.sn2")]
    if down:
      table += [(f"{b}/down_conv/kernel", f"{name}.downsample.conv.weight", _conv)]
      table += _bn(f"{b}/down_bn", f"{name}.downsample.bn")
      if dsatgo:
        spiking += [(f"{b}/down_neuron", f"{name}.downsample.sn")]
  table += [("fc/kernel", "fc1.weight", _linear), ("head/kernel", "fc2.weight", _linear)]
  if dsatgo:
    table += _bn("fc_bn", "bn_fc")
  else:
    table += [("fc/bias", "fc1.bias", _same), ("head/bias", "fc2.bias", _same)]
  spiking += [("fc_neuron", "sn_fc")]
  if dsatgo:
    table += [(f"{ours}/decay_logit", f"{theirs}.w", _same) for ours, theirs in spiking]
  return table, spiking


def _vggsnn_table(size: int):
  w = size // 16

  def classifier(k):  # rows flattened H, W, C (ours) -> C, H, W (torch.flatten of NCHW)
    return k.reshape(w, w, 512, -1).transpose(3, 2, 0, 1).reshape(k.shape[-1], -1)

  table, spiking = [], []
  for i in range(8):
    table += [(f"convs/{i}/kernel", f"features.{i}.conv.weight", _conv)]
    table += _bn(f"norms/{i}", f"features.{i}.bn")
    spiking += [(f"neurons/{i}", f"features.{i}.act")]
  table += [("head/kernel", "classifier.weight", classifier),
            ("head/bias", "classifier.bias", _same)]
  return table, spiking


def tables(key: str):
  if key == "tet_vggsnn":
    return _vggsnn_table(CASES[key].input_shape[0])
  return _resnet_table(dsatgo=key == "dsatgo_resnet19")


def flat_params(tree) -> dict[str, jax.Array]:
  """``{"a/b/c": array}`` of an ``nnx.State`` of parameters (or of their gradients)."""
  return {"/".join(map(str, path)): v.get_value() for path, v in nnx.to_flat_state(tree)}


def map_params(key: str, ours: dict, num_classes: int):
  """Our flat parameters -> the reference's dict. Every one of ours is used exactly once and
  fills a reference parameter of the same shape; returns the mapped dict and the reference's
  names that ours has no counterpart for (TET VGGSNN's conv biases)."""
  table, _ = tables(key)
  shapes = CASES[key].shapes(num_classes)
  used = [o for o, _, _ in table]
  assert len(used) == len(set(used)) and set(used) == set(ours), (
      f"unmapped: {sorted(set(ours) - set(used))}, missing: {sorted(set(used) - set(ours))}")
  out = {}
  for o, theirs, f in table:
    assert theirs in shapes and theirs not in out, theirs
    out[theirs] = f(ours[o])
    assert tuple(out[theirs].shape) == shapes[theirs], (o, theirs, out[theirs].shape)
  return out, sorted(set(shapes) - set(out))


# --- running both ----------------------------------------------------------------------------

@pytest.fixture
def sow_inputs(monkeypatch):
  """Neurons with ``probe`` also record their input (the pre-neuron current)."""
  call = layers.SpikingNeuron.__call__

  def probed(self, x_TB):
    if self.probe:
      self.sow(nnx.Intermediate, "input_TB", x_TB)
    return call(self, x_TB)
  monkeypatch.setattr(layers.SpikingNeuron, "__call__", probed)


def to_f64(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float64)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def randomise_constants(params, seed: int = 2):
  """Parameters initialised to a constant (BN scales and shifts, biases, PLIF decay logits)
  drawn at random instead: a mapping that swapped two of them would otherwise go unseen, and
  a zero FC bias can leave a layer silent."""
  rng = np.random.default_rng(seed)

  def draw(path, v):
    a = v[...]
    if a.size > 1 and not bool(jnp.all(a == a.ravel()[0])):
      return v
    name = str(path[-1])
    if name == "scale":
      new = rng.uniform(0.5, 1.5, a.shape)
    elif name == "decay_logit":
      new = a + rng.normal(0.0, 0.3, a.shape)
    else:  # BN shifts and biases
      new = rng.normal(0.0, 1.0 if path[0] in ("fc", "head") else 0.5, a.shape)
    return v.replace(jnp.asarray(new, a.dtype))
  return nnx.from_flat_state([(path, draw(path, v)) for path, v in nnx.to_flat_state(params)])


def run_ours(model, x, grad: bool):
  """Logits, ``{neuron path: {input_TB, potential_TB, spikes_TB, theta_T}}`` and (``grad``)
  the flat gradients of ``sum(sin(logits))``, all in float64."""
  model.set_attributes(probe=True)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = randomise_constants(to_f64(params)), to_f64(rest)

  def loss(params, x):
    m = nnx.merge(graphdef, params, rest, copy=True)
    (logits, _), inter = nnx.capture(m, nnx.Intermediate)(x)
    return jnp.sum(jnp.sin(logits)), (logits, inter)

  f = jax.grad(loss, has_aux=True) if grad else lambda p, x: (None, loss(p, x)[1])
  g, (logits, inter) = jax.jit(f)(params, x)
  records = {}
  for path, v in nnx.to_flat_state(inter):
    records.setdefault("/".join(map(str, path[:-1])), {})[path[-1]] = v[0]
  return logits, records, (None if g is None else flat_params(g)), flat_params(params)


def nchw(a):
  """Ours ``[..., H, W, C]`` -> the reference's ``[..., C, H, W]`` (images and feature maps)."""
  return jnp.moveaxis(a, -1, -3) if a.ndim >= 4 else a


def nhwc(a):
  """The reference's ``[T, B, C, H, W]`` -> ours ``[T, B, H, W, C]``; ``[T, B, F]`` as is."""
  return jnp.moveaxis(a, 2, -1) if a.ndim == 5 else a


def run_ref(case: Case, p, x, forced=None, grad=False):
  """The reference's logits, records and (``grad``) gradients, jitted (the records' names
  travel outside the traced function)."""
  xr = nchw(x)
  names = []

  def fwd(p, forced):
    args = (p, xr, T, forced) if case.static_input else (p, xr, forced)
    logits, recs = case.forward(*args)
    names[:] = [r.pop("name") for r in recs]
    return logits, recs

  if not grad:
    logits, recs = jax.jit(fwd)(p, forced)
    g = None
  else:
    def loss(p):
      logits, recs = fwd(p, None)
      return jnp.sum(jnp.sin(logits)), (logits, recs)
    g, (logits, recs) = jax.jit(jax.grad(loss, has_aux=True))(p)
  return logits, [dict(r, name=n) for r, n in zip(recs, names)], g


@dataclasses.dataclass
class LayerDiff:
  name: str  # reference name (our path)
  input_diff: float  # max |pre-neuron input, ours - reference|
  flips: int  # spikes that differ within tol of the threshold
  structural: int  # spikes that differ elsewhere
  rate: float  # the reference's firing rate (a layer that never fires checks little)


def compare_layers(recs, ours, spiking, tol) -> list[LayerDiff]:
  assert [r["name"] for r in recs] == [theirs for _, theirs in spiking]
  assert sorted(ours) == sorted(o for o, _ in spiking), sorted(ours)
  out = []
  for r, (path, theirs) in zip(recs, spiking):
    o = ours[path]
    differ = np.asarray(nhwc(r["spikes_TB"]) != o["spikes_TB"])
    theta = np.asarray(r["theta_T"]).reshape((-1,) + (1,) * (differ.ndim - 1))
    near = np.abs(np.asarray(nhwc(r["potential_TB"])) - theta) < tol
    dx = float(jnp.max(jnp.abs(nhwc(r["input_TB"]) - o["input_TB"])))
    out.append(LayerDiff(f"{theirs} ({path})", dx, int((differ & near).sum()),
                         int((differ & ~near).sum()), float(jnp.mean(r["spikes_TB"]))))
  return out


def layer_by_layer(key, case, p, x, recs, ours):
  """The per-layer comparison; with any spike difference the reference reruns on our spikes
  (``forced``) so that a flip does not spread downstream, and the layers are classified."""
  _, spiking = tables(key)
  diffs = compare_layers(recs, ours, spiking, case.tol)
  if any(d.flips or d.structural for d in diffs):
    forced = [nchw(ours[path]["spikes_TB"]) for path, _ in spiking]
    _, recs, _ = run_ref(case, p, x, forced=forced)
    diffs = compare_layers(recs, ours, spiking, case.tol)
  return diffs


def batch(case: Case, seed: int):
  rng = np.random.default_rng(seed)
  if case.static_input:
    return jnp.asarray(rng.normal(size=(B,) + case.input_shape), jnp.float64)
  events = rng.poisson(0.3, size=(T, B) + case.input_shape)  # event counts per frame
  return jnp.asarray(events, jnp.float64)


def report(diffs):
  return "\n".join(f"  {d.name}: max|dx| {d.input_diff:.1e}, flips {d.flips}, "
                   f"structural {d.structural}, rate {d.rate:.3f}" for d in diffs)


# --- the tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(CASES))
def test_same_function_as_the_published_model(key, sow_inputs):
  case = CASES[key]
  with jax.enable_x64(True):
    model = build(case)
    x = batch(case, SEED[key])
    logits, ours, g_ours, params = run_ours(model, x, grad=True)
    p, ref_only = map_params(key, params, case.num_classes)
    shapes = case.shapes(case.num_classes)
    assert ref.count(shapes) == case.count
    assert models.count_params(model) == case.count - ref.count({k: shapes[k] for k in ref_only})
    extra = ref.init_params({k: shapes[k] for k in ref_only}, seed=1,
                            dtype=jnp.float64)
    p.update(extra)  # TET VGGSNN's conv biases: random, BN in training mode cancels them
    logits_ref, recs, g_ref = run_ref(case, p, x, grad=True)
    diffs = layer_by_layer(key, case, p, x, recs, ours)
    print(f"\n{key}:\n{report(diffs)}")
    bad = [d for d in diffs if d.structural]
    assert not bad, f"structural difference at {bad[0].name}:\n{report(diffs)}"
    assert not any(d.flips for d in diffs), f"the batch is not flip-free:\n{report(diffs)}"
    for d in diffs:
      assert 0 < d.rate < 1, f"{d.name} fires at rate {d.rate}: choose another batch"
      assert d.input_diff < 1e-9, f"{d.name}: pre-neuron inputs differ by {d.input_diff}"
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-9, atol=1e-9)
    g_mapped, _ = map_params(key, g_ours, case.num_classes)
    worst = 0.0
    for name, g in g_mapped.items():
      scale = float(jnp.max(jnp.abs(g_ref[name]))) + 1e-30
      err = float(jnp.max(jnp.abs(g - g_ref[name]))) / scale
      worst = max(worst, err)
      assert err < GRAD_RTOL, f"gradient of {name} differs by {err:.1e} of its largest element"
    print(f"  logits max|diff| {float(jnp.max(jnp.abs(logits - logits_ref))):.1e}, "
          f"gradients max relative diff {worst:.1e}")
    for name in ref_only:  # a bias before training-mode BN has no effect and no gradient
      assert float(jnp.max(jnp.abs(g_ref[name]))) < 1e-9, name
    assert ref_only == ([f"features.{i}.conv.bias" for i in range(8)]
                        if key == "tet_vggsnn" else [])


def test_flax_same_padding_is_a_structural_difference(sow_inputs):
  """The check is not vacuous: with flax's SAME padding (0, 1) at stride 2, the first layer
  that differs structurally is the first stride-2 block's first neuron."""
  key, case = "tet_resnet19", CASES["tet_resnet19"]
  with jax.enable_x64(True):
    model = build(case, conv_padding="flax_same")
    x = batch(case, SEED[key])
    _, ours, _, params = run_ours(model, x, grad=False)
    p, _ = map_params(key, params, case.num_classes)
    logits_ref, recs, _ = run_ref(case, p, x)
    diffs = layer_by_layer(key, case, p, x, recs, ours)
  first = next(d for d in diffs if d.structural)
  assert first.name == "layer2.0.sn1 (blocks/3/neuron1)", report(diffs)
  assert first.input_diff > 1e-2
  assert all(d.input_diff < 1e-9 and not d.flips for d in diffs[:diffs.index(first)])


@pytest.mark.parametrize("key,config,num_classes", [
    ("tet_resnet19", cifar100, 100), ("dsatgo_resnet19", dsatgo_cifar100, 100),
])
def test_cifar100_models_map_one_to_one(key, config, num_classes):
  """The CIFAR-100 configs build the same structures (by shape: every parameter maps)."""
  model = build(CASES[key], abstract=True, num_classes=num_classes, config=config)
  params = {k: jnp.zeros(v.shape, v.dtype)
            for k, v in flat_params(nnx.state(model, nnx.Param)).items()}
  _, ref_only = map_params(key, params, num_classes)
  assert not ref_only
  assert ref.count(CASES[key].shapes(num_classes)) == models.count_params(model) == {
      "tet_resnet19": 12_653_988, "dsatgo_resnet19": 12_721_300}[key]
