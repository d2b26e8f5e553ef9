"""Architecture rules (docs/DECISIONS.md, issue 11): the package's imports form no cycle,
``train`` never imports ``analysis``, the config layer loads without jax or flax, every
registry's exported names match the registry, and unknown names fail with ``UserError``."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "cfsnn_jax")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
  return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _package_imports() -> dict[str, set[str]]:
  """``module -> {package modules it imports}``, every import statement (also inside
  functions: a lazy import still closes a cycle); ``from a import b`` means ``a.b`` where
  that is a module, else ``a``. A module's own parent packages are not edges (Python loads
  them first whatever the module imports)."""
  paths = {}
  for dirpath, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        paths[_module_name(os.path.join(dirpath, f))] = os.path.join(dirpath, f)
  graph = {}
  for name, path in paths.items():
    deps = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths
                   else node.module for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in paths:
          t = t.rpartition(".")[0]
        if t.startswith("cfsnn_jax") and t != name and not name.startswith(t + "."):
          deps.add(t)
    graph[name] = deps
  return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    state[n] = 2
    stack.pop()
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def _reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    n = todo.pop()
    for m in graph.get(n, ()):
      if m not in seen:
        seen.add(m)
        todo.append(m)
  return seen


def test_package_imports_have_no_cycle():
  graph = _package_imports()
  assert len(graph) > 30 and "cfsnn_jax.training.steps" in graph["cfsnn_jax.training.loop"]
  assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))


def test_cycle_finder_sees_a_cycle():
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_train_never_imports_analysis_and_analysis_never_imports_train():
  graph = _package_imports()
  assert not {m for m in _reachable(graph, "cfsnn_jax.training.loop")
              if m.startswith("cfsnn_jax.analysis")}
  for name in graph:
    if name.startswith(("cfsnn_jax.analysis", "cfsnn_jax.data")):
      assert "cfsnn_jax.training.loop" not in _reachable(graph, name), name


def test_config_layer_imports_neither_jax_nor_flax():
  code = ("import sys\n"
          "from cfsnn_jax import config_schema\n"
          "from cfsnn_jax.configs import default\n"
          "c = default.get_config()\n"
          "config_schema.validate_config(c)\n"
          "config_schema.neuron_spec(c.neuron)\n"
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax'))\n"
          "print('LOADED', bad)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert out.returncode == 0, out.stderr
  assert "LOADED []" in out.stdout, out.stdout


def test_registries_export_their_names():
  from cfsnn_jax import models
  from cfsnn_jax.config import choices
  from cfsnn_jax.neuron import equations as neurons, remat
  from cfsnn_jax.training import losses, optim
  from cfsnn_jax.neuron.spec import NEURON_PRESETS, PRESET_NAMES, SURROGATE_NAMES
  assert tuple(models.MODELS) == choices.MODEL_NAMES
  assert tuple(remat.REMATS) == choices.REMAT_NAMES
  assert tuple(neurons.SURROGATES) == SURROGATE_NAMES
  assert tuple(NEURON_PRESETS) == PRESET_NAMES
  assert losses.TASK_LOSSES == choices.TASK_LOSSES and losses.PN_VARIANTS == choices.PN_VARIANTS
  assert optim.OPTIMIZERS == choices.OPTIMIZERS


@pytest.mark.parametrize("call,match", [
    ("models.validate_model_name('resnet1000')", "unknown model 'resnet1000'; valid choices:"),
    ("remat.validate_remat('all')", "unknown remat 'all'; valid choices: none, neuron"),
    ("losses.validate_loss_config('hinge', 'mean')", "unknown loss 'hinge'; valid choices: ce, tet"),
    ("losses.pn_loss(None, 'median')", "unknown pn_variant 'median'; valid choices: mean, sign"),
    ("neurons.resolve_spec('cf', surrogate='erf')", "unknown surrogate 'erf'; valid choices:"),
    ("neurons_fused.run_neuron(None, None, alpha_T=1, decay=1, bptt='x')", "unknown bptt 'x'"),
])
def test_unknown_names_are_user_errors(call, match):
  from cfsnn_jax import models  # noqa: F401
  from cfsnn_jax.neuron import equations as neurons, fused as neurons_fused, remat
  from cfsnn_jax.training import losses
  from cfsnn_jax.errors import UserError
  with pytest.raises(UserError, match=match):
    eval(call)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_backend_workarounds_switch_keeps_values_and_gradients(mode, monkeypatch):
  """The CPU-measured workarounds (``backends.backend_workarounds``) change scheduling only:
  forced on or off, the neuron's time loop and a checkpointed block give the same values and
  gradients as the reference."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from cfsnn_jax import backends
  from cfsnn_jax.neuron import equations as neurons, fused as neurons_fused
  monkeypatch.setenv("CFSNN_BACKEND_WORKAROUNDS", mode)
  assert backends.backend_workarounds() is (mode == "on")
  assert neurons_fused.default_unroll(4) == (True if mode == "on" else 1)
  spec = neurons.resolve_spec("cf")
  x = jax.random.normal(jax.random.key(0), (4, 3, 5)) * 2

  def loss(x, fn):
    return jnp.sum(fn(x, spec, alpha_T=jnp.full((4,), 3.0), decay=0.5)[0] * jnp.sin(x))
  ref = jax.grad(loss)(x, neurons.run_neuron)
  got = jax.grad(lambda x: loss(x, lambda *a, **k: neurons_fused.run_neuron(
      *a, unroll=neurons_fused.default_unroll(4), **k)))(x)
  np.testing.assert_allclose(ref, got, rtol=1e-5, atol=1e-6)
  block = lambda w, x: jnp.tanh(x @ w) @ w.T  # noqa: E731
  w = jax.random.normal(jax.random.key(1), (5, 5))
  g_plain = jax.grad(lambda w: jnp.sum(block(w, x[0])))(w)
  g_ckpt = jax.grad(lambda w: jnp.sum(backends.checkpoint(block)(w, x[0])))(w)
  np.testing.assert_allclose(g_plain, g_ckpt, rtol=1e-5, atol=1e-6)
