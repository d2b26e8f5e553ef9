"""Accelerator programs from this CPU host: every shipped config's jitted train and eval steps
(``:tiny`` shapes, abstract arguments, nothing compiled) export with ``jax.export`` for
``cuda`` and ``tpu`` with the host's CPU paths switched on, hold no CPU-only custom call or
host callback, and equal the programs exported with every CPU switch off; the CPU lowering of
the same program keeps the oneDNN custom calls.

"Equal" is ``canonical``: the StableHLO after MLIR's inline / symbol-dce / canonicalize / cse
passes, without debug locations, each private function named by a hash of its body. jax
numbers and shares its private functions by the identity of the jaxprs it lowered (the
dropped CPU branch shifts the numbering), which is not a difference of the program."""

from __future__ import annotations

import functools
import hashlib
import re

import pytest
from jax._src.export import _export

from benchmarks import programs

PLATFORMS = ("cuda", "tpu")
# The CPU paths as a one-device CPU host takes them (the suite has 4 CPU devices, where the
# oneDNN auto mode is off, so it is forced on), and every switch off.
HOST = {"CFSNN_ONEDNN_CONV": "1", "CFSNN_BACKEND_WORKAROUNDS": "on", "CFSNN_CPU_TUNING": None}
OFF = programs.CPU_SWITCHES_OFF
SETTINGS = {"host": HOST, "off": OFF}
CPU_ONLY_TARGETS = ("CfsnnConvFwd", "CfsnnConvBwdData", "CfsnnConvBwdWeights")
CALLBACK = re.compile(r"callback|xla_ffi_python|xla_python")
CONV_CONFIG = "cifar10:tiny"  # a ResNet-19: forward and both gradients of 3x3 convolutions


environment = programs.environment


def _export_all(name: str, env: dict) -> dict:
  """``{(step, platform): (StableHLO text, Exported) or (None, error message)}``."""
  out = {}
  with environment(env):  # the switches are read while tracing
    p = programs.abstract_steps(programs.load_config(name))
    for platform in PLATFORMS:
      try:
        for step, exp in programs.export(p, platform).items():
          out[(step, platform)] = (exp.mlir_module(), exp)
      except Exception as e:  # noqa: BLE001 -- reported by the test that reads it
        for step in ("train", "eval"):
          out[(step, platform)] = (None, f"{type(e).__name__}: {str(e)[:300]}")
  return out


NAMES = [n + ":tiny" for n in programs.config_names()]


@pytest.fixture(scope="module")
def exported():
  return {name: {setting: _export_all(name, env) for setting, env in SETTINGS.items()}
          for name in NAMES}


_custom_call_targets = programs.custom_call_targets


@pytest.mark.parametrize("name", NAMES)
def test_exports_for_accelerators_free_of_cpu_paths(exported, name):
  for setting in ("host", "off"):
    for (step, platform), (text, exp) in exported[name][setting].items():
      where = f"{name} {step} step for {platform}, CPU switches {setting}"
      assert text is not None, f"{where}: export failed: {exp}"
      targets = _custom_call_targets(text)
      assert not targets & set(CPU_ONLY_TARGETS), f"{where}: CPU-only custom calls {targets}"
      unstable = targets - set(_export._CUSTOM_CALL_TARGETS_GUARANTEED_STABLE)
      assert not unstable, f"{where}: custom calls without compatibility guarantee {unstable}"
      assert not CALLBACK.search(" ".join(targets)), f"{where}: host callback {targets}"
      assert not exp.ordered_effects and not exp.unordered_effects, where
      assert exp.platforms == (platform,), where


def canonical(text: str) -> str:
  """A digest of the program's semantics (see the module docstring)."""
  from jax._src.interpreters import mlir
  from jax._src.lib.mlir import ir, passmanager
  with mlir.make_ir_context():
    module = ir.Module.parse(text)
    passmanager.PassManager.parse(
        "builtin.module(inline,symbol-dce,canonicalize,cse)").run(module.operation)
    funcs = {ir.StringAttr(op.attributes["sym_name"]).value: op.get_asm(enable_debug_info=False)
             for op in module.body.operations}

  @functools.lru_cache(maxsize=None)
  def digest(name: str) -> str:
    body = funcs[name].replace(f"@{name}(", "@SELF(", 1)
    body = re.sub(r"@([\w$.-]+)", lambda m: "@" + (
        digest(m.group(1)) if m.group(1) in funcs and m.group(1) != name else m.group(1)), body)
    return hashlib.sha256(body.encode()).hexdigest()

  return digest("main")


def test_canonical_tells_programs_apart():
  import jax
  import jax.numpy as jnp
  x = jax.ShapeDtypeStruct((4,), jnp.float32)
  text = lambda f: jax.export.export(jax.jit(f), platforms=["cuda"])(x).mlir_module()

  def helper_a(v):
    return jnp.sin(v) * 2

  def helper_b(v):  # same body, another name and source location
    return jnp.sin(v) * 2

  a = text(lambda v: jax.jit(helper_a)(v) + 1)
  b = text(lambda v: jax.jit(helper_b)(v) + 1)
  assert a != b and canonical(a) == canonical(b)
  assert canonical(a) != canonical(text(lambda v: jax.jit(jnp.cos)(v) * 2 + 1))


@pytest.mark.parametrize("name", NAMES)
def test_accelerator_programs_equal_the_programs_with_cpu_switches_off(exported, name):
  host, off = exported[name]["host"], exported[name]["off"]
  for key in host:
    assert host[key][0] is not None and off[key][0] is not None, (name, key)
    assert canonical(host[key][0]) == canonical(off[key][0]), (
        f"{name} {key[0]} step for {key[1]}: the CPU switches change the accelerator program")


def _onednn_calls(text: str) -> set[str]:
  return _custom_call_targets(text) & set(CPU_ONLY_TARGETS)


def test_cpu_lowering_keeps_the_onednn_kernels():
  from cfsnn_jax.backends import onednn_conv
  if not onednn_conv._build_possible():
    pytest.skip("oneDNN kernels cannot be built here (no compiler or oneDNN headers)")
  with environment(HOST):
    on = programs.lower_text(programs.abstract_steps(programs.load_config(CONV_CONFIG)), "cpu")
  with environment(OFF):
    off = programs.lower_text(programs.abstract_steps(programs.load_config(CONV_CONFIG)),
                              "cpu")
  assert _onednn_calls(on["train"]) >= {"CfsnnConvBwdData", "CfsnnConvBwdWeights"}, \
      "the CPU train step lost its oneDNN gradient kernels"
  assert not _onednn_calls(off["train"]), "CFSNN_ONEDNN_CONV=0 left oneDNN kernels in"
  assert not _onednn_calls(on["eval"]), "the float32 eval forward is XLA's convolution"
