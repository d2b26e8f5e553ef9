"""``benchmarks.plan`` on a ``:tiny`` config: XLA's FLOP count of the accelerator program
agrees with an independent count of the convolutions and matmuls in the step's jaxpr; the
bounds are FLOPs over the device's peak; the activation estimate falls with ``remat``."""

import math
import os

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _matmul_flops(jaxpr, mult=1) -> int:
  """2 x multiply-adds of every convolution and dot_general (scan bodies x their length)."""
  from jax.extend import core as jcore
  total = 0
  for eqn in jaxpr.eqns:
    p = eqn.primitive.name
    if p == "conv_general_dilated":
      rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
      window = math.prod(rhs.shape[i] for i in spec[2:])
      total += mult * 2 * math.prod(out.shape) * window * rhs.shape[spec[1]]
    elif p == "dot_general":
      a, out = eqn.invars[0].aval, eqn.outvars[0].aval
      (contract, _), _ = eqn.params["dimension_numbers"]
      total += mult * 2 * math.prod(out.shape) * math.prod(a.shape[i] for i in contract)
    for sub in eqn.params.values():
      for s in sub if isinstance(sub, (list, tuple)) else [sub]:
        j = getattr(s, "jaxpr", s)
        if isinstance(j, jcore.Jaxpr):
          total += _matmul_flops(j, mult * (eqn.params["length"] if p == "scan" else 1))
  return total


@pytest.fixture(scope="module")
def tiny_plan():
  import jax
  from benchmarks import plan, programs
  from cfsnn_jax.backends import per_platform
  name = f"{plan.TINY_CONFIG}:tiny"
  config = programs.load_config(name)
  with plan.switches_off(), per_platform.portable_only():  # the accelerator branch alone
    p = programs.abstract_steps(config, programs.dataset_info(config),
                                devices=jax.devices()[:1])
    reference = _matmul_flops(p.train.trace(p.state, p.batch).jaxpr.jaxpr)
  # The CPU paths on, as a one-device CPU host takes them (the suite's 4 devices turn the
  # oneDNN auto mode off): the exports column must still say cuda+tpu.
  with programs.environment({"CFSNN_ONEDNN_CONV": "1", "CFSNN_BACKEND_WORKAROUNDS": "on"}):
    row = plan.plan_config(name)
    assert os.environ["CFSNN_ONEDNN_CONV"] == "1"  # switches_off restores the host's
  return row, reference, config


def test_flops_agree_with_an_independent_count(tiny_plan):
  row, reference, _ = tiny_plan
  # XLA counts a convolution's multiply-adds without the zero padding (a large share at the
  # tiny config's 4x4 / 8x8 maps) and adds the elementwise work on top.
  assert reference > 0
  assert 0.85 <= row["flops_per_step"] / reference <= 1.25, (row["flops_per_step"], reference)


def test_the_host_programs_export_for_accelerators(tiny_plan):
  assert tiny_plan[0]["exports"] == "cuda+tpu"


def test_bounds_are_flops_over_peak(tiny_plan):
  from benchmarks import plan
  row, _, config = tiny_plan
  for dev, (peaks, bandwidth) in plan.DEVICES.items():
    b = row["bounds"][dev]
    assert b["step_s"] == pytest.approx(row["flops_per_step"] / peaks[config.compute_dtype])
    assert b["unfused_bytes_s"] == pytest.approx(row["bytes_accessed_per_step"] / bandwidth)
    assert b["recipe_device_hours"] == pytest.approx(b["step_s"] * row["total_steps"] / 3600)
  assert row["num_params"] > 0 and row["state_bytes"] >= 4 * row["num_params"]


def test_activation_estimate_falls_with_remat(tiny_plan):
  act = tiny_plan[0]["activation_bytes"]
  assert act["none"] > 0
  assert act["block_full"] < act["block"] < act["none"]
  assert act["neuron"] <= act["none"]


def test_table_has_one_row_per_config(tiny_plan):
  from benchmarks import plan
  text = plan.table([tiny_plan[0]])
  lines = text.splitlines()
  assert len(lines) == 3 and lines[2].startswith(f"| {plan.TINY_CONFIG}:tiny |")
  assert len(lines[0].split("|")) == len(lines[2].split("|"))


def test_paper_configs_are_the_reproduce_rows():
  from benchmarks import plan
  from experiments import reproduce
  assert set(plan.paper_configs()) == {r.config for r in reproduce.ROWS if r.config}
