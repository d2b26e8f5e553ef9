"""Cost plan of every paper run, from its accelerator program (abstract shapes, nothing run).

  python -m benchmarks.plan                         # every paper config, full size (minutes)
  python -m benchmarks.plan --configs=cifar10,sst2 --out=/tmp/plan.json
  python -m benchmarks.plan --tiny                  # one :tiny config (the suite's form)
  python -m benchmarks.plan --check_memory=cifar10 --batch=16   # the estimate vs XLA:CPU's

For each config at its recipe's batch size and T (one device holding the whole global batch),
the train and eval steps are first exported with ``jax.export`` for ``cuda`` and ``tpu`` with
the host's CPU switches as they are (column ``exports``: ``cuda+tpu`` where both hold no
CPU-only custom call, else the failure); then the train step is traced as ``train.py`` jits it
(``benchmarks.programs``) with every CPU switch off and lowered for ``cuda``; from that program:

- parameters; FLOPs and bytes accessed per step: XLA's HLO cost analysis of the lowered
  (unoptimised, pre-fusion) module (``Lowered.cost_analysis()``, which runs on this host).
  FLOPs count each multiply-add as 2 and do not change with fusion; bytes accessed count every
  HLO operand and result, as if nothing were fused, so they over-state the traffic of the
  compiled program;
- activation memory per device for each ``model.remat`` setting: the bytes of the residuals
  the backward pass keeps from the forward pass (``jax.ad_checkpoint``'s ``saved_residuals`` of
  the loss, parameters and inputs excluded), plus the training state (parameters + optimizer
  state) as its own column. It is the autodiff's own account, before XLA's scheduling: XLA's
  temporaries (and a recomputed block's) come on top, fusion may drop a few; how far it holds
  against a compiled program's buffer assignment is in docs/PERFORMANCE.md "Cost plan";
- the step's lower bound on an H100 (989 TFLOP/s bf16 dense, 67 TFLOP/s fp32, 3.35 TB/s) and
  a TPU v5e chip (197 TFLOP/s bf16, 819 GB/s): FLOPs / peak for the config's compute dtype
  (the compute roofline; the bytes / bandwidth time is printed beside it but not used, being
  pre-fusion), and the recipe's total (epochs x steps per epoch, ``FULL_SIZE`` training
  examples) in device-hours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any

from jax._src.ad_checkpoint import saved_residuals

# name, compute-dtype peak FLOP/s, memory bandwidth (bytes/s). TPU v5e: 197 TFLOP/s on the
# MXU; its float32 matmuls run as bf16 passes (XLA's default precision), same peak.
DEVICES = {
    "H100": ({"bfloat16": 989e12, "float32": 67e12}, 3.35e12),
    "TPU v5e": ({"bfloat16": 197e12, "float32": 197e12}, 819e9),
}
# jax device_kind substrings -> the plan's device (an H200 has the H100's compute peaks).
_KINDS = {"H100": "H100", "H200": "H100", "TPU v5 lite": "TPU v5e", "TPU v5e": "TPU v5e"}


def device_peaks(device_kind: str) -> dict[str, float] | None:
  for k, dev in _KINDS.items():
    if k.lower() in device_kind.lower():
      return DEVICES[dev][0]
  return None


REMAT_SETTINGS = ("none", "neuron", "block", "block_full")
TINY_CONFIG = "cifar10"


def paper_configs() -> list[str]:
  """The configs of ``experiments.reproduce``'s rows, once each, in row order."""
  from experiments import reproduce
  return list(dict.fromkeys(r.config for r in reproduce.ROWS if r.config))


def _bytes(avals) -> int:
  import numpy as np
  return int(sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in avals))


def residual_bytes(config: Any, info: Any) -> int:
  """Bytes the backward pass keeps from the forward pass of ``config``'s loss."""
  import jax
  from flax import nnx
  from cfsnn_jax.training import steps
  from benchmarks import programs
  from cfsnn_jax.config import resolve
  built: dict[str, Any] = {}
  run = resolve(config)

  def init():
    built["setup"] = steps.create_train_state(run, info, 1000)
    return built["setup"].state

  state = jax.eval_shape(init)
  graphdef = built["setup"].graphdef
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
           for k, v in programs.batch_spec(config, info, steps.make_mesh(
               jax.devices()[:1])).items()}

  def loss(params, rest, batch):
    p, b = steps._in_compute_dtype(params, batch, config.compute_dtype)
    model = nnx.merge(graphdef, p, rest, copy=True)
    return steps._forward_metrics(model, b, config.loss)[0]

  res = saved_residuals(loss, state["params"], state["rest"], batch)
  return _bytes(a for a, src in res if not src.startswith("from the argument"))


def switches_off():
  """A context within which traces are the accelerator program (every CPU switch off)."""
  from benchmarks import programs
  return programs.environment(programs.CPU_SWITCHES_OFF)


def export_check(config: Any, info: Any) -> str:
  """``"cuda+tpu"`` where the train and eval steps, traced with the host's CPU switches as
  they are, export for both with no CPU-only custom call; else the first failure, one line."""
  import jax
  from benchmarks import programs
  from cfsnn_jax.backends import onednn_conv
  cpu_only = set(onednn_conv._TARGETS.values())
  p = programs.abstract_steps(config, info, devices=jax.devices()[:1])
  for platform in ("cuda", "tpu"):
    try:
      exported = programs.export(p, platform)
    except Exception as e:  # noqa: BLE001 -- reported in the table
      return f"{platform}: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    for step, exp in exported.items():
      found = programs.custom_call_targets(exp.mlir_module())
      if found & cpu_only:
        return f"{platform} {step}: CPU-only custom calls {sorted(found & cpu_only)}"
  return "cuda+tpu"


def plan_config(name: str) -> dict[str, Any]:
  from benchmarks import programs
  config = programs.load_config(name)
  info = programs.dataset_info(config)
  t0 = time.perf_counter()
  exports = export_check(config, info)
  with switches_off():
    return _plan(name, config, info, exports, t0)


def _plan(name: str, config: Any, info: Any, exports: str, t0: float) -> dict[str, Any]:
  import jax
  from benchmarks import programs
  p = programs.abstract_steps(config, info, devices=jax.devices()[:1])
  lowered = p.train.trace(p.state, p.batch).lower(lowering_platforms=("cuda",))
  cost = lowered.cost_analysis()
  flops, nbytes = float(cost["flops"]), float(cost["bytes accessed"])
  state_bytes = _bytes(jax.tree.leaves(p.state))
  activations = {}
  for remat in REMAT_SETTINGS:
    c = config.copy_and_resolve_references()
    c.model.remat = remat
    activations[remat] = residual_bytes(c, info)
  num_train = programs.FULL_SIZE.get(config.dataset, {}).get("num_train", config.batch_size)
  steps_per_epoch = max(1, num_train // config.batch_size)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  bounds = {}
  for dev, (peaks, bandwidth) in DEVICES.items():
    compute_s = flops / peaks[config.compute_dtype]
    bounds[dev] = {"step_s": compute_s, "unfused_bytes_s": nbytes / bandwidth,
                   "recipe_device_hours": compute_s * total_steps / 3600}
  return {"config": name, "model": config.model.name, "dataset": config.dataset,
          "batch": config.batch_size, "num_steps": config.num_steps,
          "compute_dtype": config.compute_dtype, "num_params": p.num_params,
          "flops_per_step": flops, "bytes_accessed_per_step": nbytes,
          "state_bytes": state_bytes, "activation_bytes": activations,
          "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
          "bounds": bounds, "exports": exports, "plan_s": time.perf_counter() - t0}


def check_memory(name: str, batch: int) -> list[dict[str, Any]]:
  """The activation estimate against the compiled CPU program's buffer assignment (XLA's
  ``memory_analysis()`` temp bytes), per remat setting, with the host's CPU switches as they
  are and with them off."""
  import jax
  from benchmarks import programs
  out = []
  for remat in ("none", "block_full"):
    config = programs.load_config(name)
    config.batch_size, config.model.remat = batch, remat
    info = programs.dataset_info(config)
    with switches_off():
      estimate = residual_bytes(config, info)
    for setting in ("host", "off"):
      with switches_off() if setting == "off" else contextlib.nullcontext():
        p = programs.abstract_steps(config, info, devices=jax.devices()[:1])
        temp = p.train.trace(p.state, p.batch).lower().compile().memory_analysis()
      out.append({"config": name, "batch": batch, "remat": remat, "switches": setting,
                  "estimate_bytes": estimate, "compiled_temp_bytes": temp.temp_size_in_bytes})
      print(f"  {name} B={batch} remat={remat} CPU switches {setting}: estimate "
            f"{_gib(estimate)} GiB, compiled temp {_gib(temp.temp_size_in_bytes)} GiB "
            f"({temp.temp_size_in_bytes / estimate:.2f}x)", flush=True)
  return out


def _gib(b: float) -> str:
  return f"{b / 2**30:.3g}"


def table(rows: list[dict[str, Any]]) -> str:
  head = ["config", "model", "B", "T", "dtype", "params", "GFLOP/step", "GB accessed",
          "state GiB"] + [f"act GiB {r}" for r in REMAT_SETTINGS] + [
          "H100 step ms", "H100 recipe h", "v5e step ms", "v5e recipe h", "exports"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    b = r["bounds"]
    cells = [r["config"], r["model"], str(r["batch"]), str(r["num_steps"]), r["compute_dtype"],
             f"{r['num_params']:,}", f"{r['flops_per_step'] / 1e9:,.4g}",
             f"{r['bytes_accessed_per_step'] / 1e9:,.4g}", _gib(r["state_bytes"])]
    cells += [_gib(r["activation_bytes"][k]) for k in REMAT_SETTINGS]
    cells += [f"{1e3 * b['H100']['step_s']:.3g}", f"{b['H100']['recipe_device_hours']:.3g}",
              f"{1e3 * b['TPU v5e']['step_s']:.3g}",
              f"{b['TPU v5e']['recipe_device_hours']:.3g}", r["exports"]]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.plan", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", default="", help="comma list of shipped configs (default: "
                 "every paper config; NAME:tiny for a config's tiny branch)")
  p.add_argument("--tiny", action="store_true", help=f"plan {TINY_CONFIG}:tiny only (tests)")
  p.add_argument("--out", default="", help="write every number as JSON here")
  p.add_argument("--check_memory", default="", metavar="CONFIG",
                 help="compile CONFIG's CPU program at --batch and compare its buffer "
                 "assignment with the activation estimate (instead of the plan)")
  p.add_argument("--batch", type=int, default=16, help="batch size of --check_memory")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from benchmarks import programs
  from benchmarks.measure import machine
  from cfsnn_jax.errors import UserError, unknown_choice
  names = ([f"{TINY_CONFIG}:tiny"] if args.tiny else
           [n for n in args.configs.split(",") if n] or paper_configs())
  known = programs.config_names()
  for n in names:
    if n.partition(":")[0] not in known:
      raise unknown_choice("config (--configs)", n, known)
  mach = machine()
  if args.check_memory:
    if args.check_memory.partition(":")[0] not in known:
      raise unknown_choice("config (--check_memory)", args.check_memory, known)
    if args.batch < 1:
      raise UserError(f"--batch={args.batch}: expected a positive batch size")
    print(f"memory check on: {mach['cpu']}, jax {mach['jax']}", flush=True)
    rows = check_memory(args.check_memory, args.batch)
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"machine": mach, "memory": rows}, f, indent=1)
    return {"machine": mach, "memory": rows}
  print(f"plan traced on: {mach['cpu']}, jax {mach['jax']}; lowered for cuda (XLA cost "
        "analysis of the unoptimised module)", flush=True)
  rows = []
  for n in names:
    r = plan_config(n)
    print(f"  {n}: {r['flops_per_step'] / 1e9:,.4g} GFLOP/step, H100 bound "
          f"{1e3 * r['bounds']['H100']['step_s']:.3g} ms, exports {r['exports']} "
          f"({r['plan_s']:.0f} s)", flush=True)
    rows.append(r)
  print()
  print(table(rows))
  report = {"machine": mach, "devices": {k: {"peak_flops": v[0], "bandwidth": v[1]}
                                         for k, v in DEVICES.items()}, "rows": rows}
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
    print(f"\nwrote {args.out}")
  return report


if __name__ == "__main__":
  try:
    main()
  except Exception as e:  # one line for a user's mistake
    from cfsnn_jax.errors import UserError
    if isinstance(e, UserError):
      sys.exit(f"error: {e}")
    raise
