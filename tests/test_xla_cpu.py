"""cfsnn_jax.backends.xla_cpu: the CPU-only XLA flags reach XLA (no YNNPACK convolution in the
compiled program, YNNPACK dots kept), only on CPU, switchable off, never overriding a flag the
user set; the benchmark's per-executable option set equals the CLI's XLA_FLAGS."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp

from cfsnn_jax.backends import switches, xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r"""
import json, os, re, sys
from cfsnn_jax.backends import xla_cpu
applied = xla_cpu.apply()
import jax, jax.numpy as jnp
x, w, m = jnp.ones((2, 8, 8, 32)), jnp.ones((3, 3, 32, 32)), jnp.ones((64, 64))
def f(x, w, m):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y, m @ m
txt = jax.jit(f).lower(x, w, m).compile().as_text()
print(json.dumps({"applied": applied, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "hlo": txt}))
"""


def _probe(**env):
  full = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  full.pop(xla_cpu.ENV_SWITCH, None)
  full.update(env)
  r = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=full, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  import json
  return json.loads(r.stdout.strip().splitlines()[-1])


def _ynn_ops(hlo):
  """Ops inside __ynn_fusion computations: {'conv', 'dot'} subsets."""
  kinds = set()
  for name in re.findall(r"calls=%?([\w.\-]+), [^\n]*__ynn_fusion", hlo):
    body = hlo.split(f"%{name} (", 1)[1].split("\n}", 1)[0]
    kinds |= {k for k, op in (("conv", " convolution("), ("dot", " dot(")) if op in body}
  return kinds


def test_cli_settings_move_convolutions_off_ynnpack_and_keep_its_dots():
  on = _probe()
  assert on["applied"]["enabled"] and not on["applied"]["late"]
  assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in on["xla_flags"]
  assert _ynn_ops(on["hlo"]) == {"dot"}
  off = _probe(CFSNN_CPU_TUNING="0")
  assert not off["applied"]["enabled"] and off["xla_flags"] == ""
  assert _ynn_ops(off["hlo"]) == {"conv", "dot"}  # jaxlib's default, for contrast


def test_a_flag_the_user_set_is_kept():
  user = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution"
  got = xla_cpu.xla_flags_with(xla_cpu.CPU_XLA_FLAGS, f"{user} --xla_cpu_enable_fast_math=false")
  assert got == f"{user} --xla_cpu_enable_fast_math=false"
  assert xla_cpu.xla_flags_with(xla_cpu.CPU_XLA_FLAGS, "") == (
      "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")


def test_off_by_default_when_an_accelerator_is_asked_for(monkeypatch):
  monkeypatch.delenv(xla_cpu.ENV_SWITCH, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert switches.cpu_expected()[0] is False
  assert xla_cpu.apply() == {"enabled": False, "reason": "JAX_PLATFORMS=cuda,cpu", "late": False}
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert xla_cpu.apply()["enabled"] is False
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert switches.cpu_expected()[0] is True


def test_too_late_in_a_running_process_changes_nothing(monkeypatch):
  jax.devices()  # this test process has started its backend
  monkeypatch.setenv(xla_cpu.ENV_SWITCH, "1")
  before = os.environ.get("XLA_FLAGS")
  out = xla_cpu.apply()
  assert out["enabled"] and out["late"] and os.environ.get("XLA_FLAGS") == before


def test_compiler_options_equal_the_cli_flags():
  """The benchmarks' in-process option set compiles the probe to the same library split."""
  x, w, m = jnp.ones((2, 8, 8, 32)), jnp.ones((3, 3, 32, 32)), jnp.ones((64, 64))

  def f(x, w, m):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y, m @ m
  low = jax.jit(f).lower(x, w, m)
  assert _ynn_ops(low.compile(compiler_options=xla_cpu.compiler_options()).as_text()) == {"dot"}
  assert _ynn_ops(low.compile().as_text()) == {"conv", "dot"}
