"""Benchmark entry point: train-step throughput, compile time and peak memory.

  python -m benchmarks.run                                  # ResNet-19, VGGSNN, Spikformer
  python -m benchmarks.run --models=resnet19 --num_steps=4,8 --batch=8 --remat=none,block \\
      --dtype=float32 --steps=5 --out=/tmp/bench.json
  python -m benchmarks.run --tiny                           # smoke test (< 1 minute)
  python -m benchmarks.run --device_check --out=/tmp/device.json   # a lent GPU/TPU, < 8 min

Every case (model, T, remat, dtype) runs ``cfsnn_jax.training.steps.train_step`` exactly as the
training loop jits it (see ``benchmarks/measure.py``) on a synthetic batch, in a fresh
subprocess by default (``--isolate``) so that compilation caches, the process RSS high-water
mark and the accelerator's peak-memory counter belong to that case alone. Per model the ANN
twin (``neuron.activation = "relu"``, same layers, T = 1; ``--ann_num_steps`` adds ReLU
networks at other T) runs in the same invocation as the reference. The output is a table on
stdout (with the machine description) and, with ``--out``, a JSON file of every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.cases import BENCH_MODELS, DEFAULT_MODELS, Case

_RESULT = "BENCHMARK_RESULT "


def _ints(s: str) -> list[int]:
  return [int(v) for v in s.split(",") if v]


def _strs(s: str) -> list[str]:
  return [v for v in s.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", type=_strs, default=list(DEFAULT_MODELS),
                 help=f"comma list of {', '.join(BENCH_MODELS)}")
  p.add_argument("--num_steps", type=_ints, default=None,
                 help="T values (default 1,2,4,8; with --tiny: 2)")
  p.add_argument("--batch", type=int, default=8, help="global batch size")
  p.add_argument("--dtype", type=_strs, default=["float32"], help="float32 and/or bfloat16")
  p.add_argument("--remat", type=_strs, default=None,
                 help="config.model.remat values (none, neuron, block, block_full; default "
                      "none,block; with --tiny: none)")
  p.add_argument("--ann_num_steps", type=_ints, default=None,
                 help="T values of the ReLU twin (default 1; with --tiny: none; empty: no twin)")
  p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  p.add_argument("--repeats", type=int, default=1,
                 help="run the whole case list this many times, round-robin (each case then "
                      "reports the median over repeats of its step-time medians)")
  p.add_argument("--tiny", action="store_true",
                 help="a few channels per layer, T = 2, remat none, no ANN twin, in this "
                      "process: a smoke test of every model in well under a minute")
  p.add_argument("--xla_flags", default=None,
                 help="XLA_FLAGS for the measured processes (default: inherit)")
  p.add_argument("--cpu_tuning", choices=("auto", "on", "off"), default="auto",
                 help="cfsnn_jax.backends.xla_cpu settings (XLA:CPU flags + allocator), exactly as "
                      "python -m cfsnn_jax.main applies them: auto = on for CPU runs")
  p.add_argument("--no_isolate", dest="isolate", action="store_false", default=None,
                 help="run every case in this process (faster, shared caches and RSS; the "
                      "default with --tiny)")
  p.add_argument("--isolate", dest="isolate", action="store_true",
                 help="one fresh subprocess per case (the default without --tiny)")
  p.add_argument("--timeout", type=float, default=1800, help="seconds per isolated case")
  p.add_argument("--out", default="", help="write every number as JSON here")
  p.add_argument("--suite", choices=("train", "neuron"), default="train",
                 help="train: the train-step cases; neuron: the CF neuron alone "
                      "(BPTT / time-loop variants, [T, batch, 32, 32, 128])")
  p.add_argument("--peak_flops", type=float, default=0.0,
                 help="the device's peak FLOP/s (e.g. 989e12 for H100 dense bf16): adds the "
                      "achieved fraction per case")
  p.add_argument("--device_check", action="store_true",
                 help="the accelerator check (< 8 minutes on one GPU/TPU): ResNet-19 T=4 at "
                      "batch 64 and 128 in float32 and bfloat16, VGGSNN T=10, Spikformer T=4 "
                      "(batch 64), FLOP/s against the device's peak, then a :tiny training "
                      "run of the CLI; with --tiny: the same cases shrunk (the CPU test)")
  p.add_argument("--skip_training_run", action="store_true",
                 help="--device_check without the CLI :tiny run (the test suite has its own)")
  p.add_argument("--case", default="", help=argparse.SUPPRESS)  # child mode
  args = p.parse_args(argv)
  if args.num_steps is None:
    args.num_steps = [2] if args.tiny else [1, 2, 4, 8]
  if args.remat is None:
    args.remat = ["none"] if args.tiny else ["none", "block"]
  if args.ann_num_steps is None:
    args.ann_num_steps = [] if args.tiny else [1]
  if args.isolate is None:
    args.isolate = not args.tiny
  if args.device_check and not args.tiny:
    args.steps = min(args.steps, 5)
  unknown = [m for m in args.models if m not in BENCH_MODELS]
  if unknown:
    p.error(f"unknown model(s) {unknown}; valid choices: {', '.join(BENCH_MODELS)}")
  return args


# Dense peak FLOP/s by device kind (substring of jax's device_kind) and compute dtype: bf16
# tensor cores / MXU; float32 = TF32 tensor cores (XLA's default matmul precision on GPU).
DEVICE_PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v6": {"bfloat16": 918e12, "float32": 918e12},
}


def device_peak(device_kind: str, dtype: str) -> float | None:
  for k, v in DEVICE_PEAKS.items():
    if k.lower() in device_kind.lower():
      return v.get(dtype)
  return None


def plan_bound_s(device_kind: str, dtype: str, flops: float | None) -> float | None:
  """The step's lower bound as ``benchmarks.plan`` computes it (FLOPs / the plan's peak of
  this device for ``dtype``); None where the plan has no such device."""
  from benchmarks.plan import device_peaks
  peaks = device_peaks(device_kind)
  return flops / peaks[dtype] if peaks and flops else None


def device_check_cases(tiny: bool) -> list[Case]:
  """ResNet-19 T=4 at B 64/128 (fp32, bf16), VGGSNN T=10, Spikformer T=4 (B 64); tiny: B 8."""
  b1, b2 = (8, 8) if tiny else (64, 128)
  out = [Case("resnet19", 4, b, d, tiny=tiny) for d in ("float32", "bfloat16")
         for b in dict.fromkeys((b1, b2))]
  out += [Case("vggsnn", 10 if not tiny else 2, b1, "float32", tiny=tiny),
          Case("spikformer", 4 if not tiny else 2, b1, "float32", tiny=tiny)]
  return out


def tiny_training_run(timeout: float = 600) -> dict[str, Any]:
  """``python -m cfsnn_jax.main --config=configs/default.py:tiny`` on this machine's default
  device, in a temporary workdir: exit code, wall seconds and the last line it printed."""
  import tempfile
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    try:
      r = subprocess.run([sys.executable, "-m", "cfsnn_jax.main",
                          "--config=cfsnn_jax/configs/default.py:tiny", f"--workdir={workdir}"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
      rc, tail = r.returncode, (r.stdout + r.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
      rc, tail = 124, [f"timeout after {timeout:.0f} s"]
    metrics = os.path.join(workdir, "metrics.jsonl")
    lines = open(metrics).read().splitlines() if os.path.exists(metrics) else []
    summary = os.path.join(workdir, "summary.json")
    accuracy = json.load(open(summary)).get("test_accuracy") if os.path.exists(summary) else None
    return {"returncode": rc, "wall_s": time.perf_counter() - t0,
            "last_line": tail[0] if tail else "", "metric_lines": len(lines),
            "test_accuracy": accuracy}


def cases(args: argparse.Namespace) -> list[Case]:
  if args.device_check:  # --models filters the check's cases
    return [c for c in device_check_cases(args.tiny) if c.model in args.models]
  out = []
  for model in args.models:
    for dtype in args.dtype:
      for T in args.ann_num_steps:
        out.append(Case(model, T, args.batch, dtype, "none", ann=True, tiny=args.tiny))
      for remat in args.remat:
        for T in args.num_steps:
          out.append(Case(model, T, args.batch, dtype, remat, tiny=args.tiny))
  return out


def _run_isolated(case: Case, args: argparse.Namespace) -> dict[str, Any]:
  env = dict(os.environ)
  if args.xla_flags is not None:
    env["XLA_FLAGS"] = args.xla_flags
  _tuning_env(env, args.cpu_tuning)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, "-m", "benchmarks.run", "--case", json.dumps(dataclasses.asdict(case)),
         f"--steps={args.steps}", f"--warmup={args.warmup}"]
  t0 = time.perf_counter()
  try:
    r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True,
                       timeout=args.timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timeout after {args.timeout:.0f} s"}
  for line in r.stdout.splitlines():
    if line.startswith(_RESULT):
      out = json.loads(line[len(_RESULT):])
      out["process_s"] = time.perf_counter() - t0
      return out
  tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
  return {"error": " | ".join(tail) or f"exit code {r.returncode}"}


def _tuning_env(env: dict, mode: str) -> None:
  """``--cpu_tuning``: on / off set ``CFSNN_CPU_TUNING``; auto leaves the environment (and
  so ``xla_cpu.apply``'s own decision) alone."""
  from cfsnn_jax.backends import xla_cpu
  if mode != "auto":
    env[xla_cpu.ENV_SWITCH] = "1" if mode == "on" else "0"


def _child(args: argparse.Namespace) -> None:
  from cfsnn_jax.backends import xla_cpu
  xla_cpu.apply()  # before jax starts, as the CLI does (the parent set the switch)
  from benchmarks.measure import run_case
  case = Case(**json.loads(args.case))
  print(_RESULT + json.dumps(run_case(case, steps=args.steps, warmup=args.warmup)), flush=True)


def _combine(rs: list[dict[str, Any]]) -> dict[str, Any]:
  """One result per case from its repeats: medians of the per-repeat medians (the spread
  stays in ``step_s_min`` / ``step_s_max`` over all timed steps and in ``repeats``)."""
  ok = [r for r in rs if "error" not in r]
  if not ok:
    return dict(rs[0])
  if len(ok) == 1:
    return dict(ok[0], repeats=[ok[0]["step_s_median"]])
  out = dict(ok[0])
  for k in ("step_s_median", "cpu_s_median", "trace_compile_s", "lower_s", "compile_s"):
    out[k] = statistics.median(r[k] for r in ok)
  out["step_s_min"] = min(r["step_s_min"] for r in ok)
  out["step_s_max"] = max(r["step_s_max"] for r in ok)
  out["step_s_all"] = [t for r in ok for t in r["step_s_all"]]
  out["cpu_s_all"] = [t for r in ok for t in r["cpu_s_all"]]
  out["rss_peak_bytes"] = max(r["rss_peak_bytes"] for r in ok)
  out["images_per_s"] = out["batch"] / out["step_s_median"]
  if out.get("flops_per_step"):
    out["achieved_flops_per_s"] = out["flops_per_step"] / out["step_s_median"]
  out["repeats"] = [r["step_s_median"] for r in ok]
  return out


# ----------------------------------------------------------------------------- reporting

def _mb(b: Any) -> str:
  return "-" if b is None else f"{b / 2**20:,.0f}"


def table(results: list[dict[str, Any]]) -> str:
  head = ("model", "net", "T", "remat", "dtype", "B", "img/s", "step s (min-max)", "cpu s",
          "compile s", "XLA peak MB", "RSS MB", "dev peak MB")
  rows = [head]
  for r in results:
    c = r["case"]
    name = c["model"] + ("-tiny" if c["tiny"] else "")
    if "error" in r:
      rows.append((name, "ANN" if c["ann"] else "SNN", str(c["num_steps"]), c["remat"],
                   c["dtype"], str(c["batch"]), "error: " + r["error"][:60], "", "", "", "",
                   "", ""))
      continue
    rows.append((
        name, "ANN" if c["ann"] else "SNN", str(c["num_steps"]), c["remat"], c["dtype"],
        str(c["batch"]), f"{r['images_per_s']:.2f}",
        f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f})",
        f"{r['cpu_s_median']:.2f}", f"{r['trace_compile_s']:.1f}", _mb(r["xla_peak_bytes"]),
        _mb(r["rss_peak_bytes"]), _mb(r["device_peak_bytes"])))
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in rows]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def _find(results, **kw):
  for r in results:
    c = r["case"]
    if "error" not in r and all(c.get(k) == v for k, v in kw.items()):
      return r
  return None


def summary(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
  """The issue's target ratios, from this run's numbers (None where a case is missing)."""
  out: dict[str, Any] = {}
  t_max = max(args.num_steps)
  for model in args.models:
    for dtype in args.dtype:
      key = f"{model}/{dtype}"
      s: dict[str, Any] = {}
      ann = _find(results, model=model, dtype=dtype, ann=True, num_steps=1)
      snn4 = _find(results, model=model, dtype=dtype, ann=False, num_steps=4, remat="none")
      if ann and snn4:
        s["snn_T4_over_4x_ann"] = snn4["step_s_median"] / (4 * ann["step_s_median"])
        s["snn_T4_over_4x_ann_cpu"] = snn4["cpu_s_median"] / (4 * ann["cpu_s_median"])
      if snn4:
        s["compile_s_T4"] = snn4["trace_compile_s"]
      base = _find(results, model=model, dtype=dtype, ann=False, num_steps=t_max, remat="none")
      for remat in args.remat:
        curve = {}
        for T in args.num_steps:
          r = _find(results, model=model, dtype=dtype, ann=False, num_steps=T, remat=remat)
          if r and r["xla_peak_bytes"]:
            curve[T] = r["xla_peak_bytes"]
        if curve:
          t0 = min(curve)
          s[f"memory_vs_T/{remat}"] = {T: v / curve[t0] for T, v in sorted(curve.items())}
        r = _find(results, model=model, dtype=dtype, ann=False, num_steps=t_max, remat=remat)
        if remat != "none" and r and base:
          s[f"remat/{remat}/T{t_max}/memory_ratio"] = (
              r["xla_peak_bytes"] / base["xla_peak_bytes"] if base["xla_peak_bytes"] else None)
          s[f"remat/{remat}/T{t_max}/throughput_cost"] = (
              1 - r["images_per_s"] / base["images_per_s"])
          s[f"remat/{remat}/T{t_max}/cpu_time_cost"] = (
              r["cpu_s_median"] / base["cpu_s_median"] - 1)
      out[key] = s
  return out


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.3f}"
  if isinstance(v, dict):
    return "{" + ", ".join(f"T={k}: {x:.2f}" for k, x in v.items()) + "}"
  return str(v)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.case:
    _child(args)
    return {}
  from cfsnn_jax.backends import xla_cpu
  if args.xla_flags is not None:
    os.environ["XLA_FLAGS"] = args.xla_flags  # before jax initialises its backend
  _tuning_env(os.environ, args.cpu_tuning)
  tuning = xla_cpu.apply()  # this process (in-process cases, and what the report says)
  from benchmarks.measure import machine, run_case
  mach = machine()
  mach["cpu_tuning"] = tuning
  mach["loadavg_start"] = os.getloadavg()
  print(f"machine: {mach['cpu']}, {mach['cpu_cores']} cores; jax {mach['jax']} "
        f"(jaxlib {mach['jaxlib']}), flax {mach['flax']}; {mach['num_devices']} x "
        f"{mach['device_kind']} [{mach['platform']}]; XLA_FLAGS={mach['xla_flags']!r}; "
        f"cpu tuning: {tuning}; load average {mach['loadavg_start']}", flush=True)
  if args.suite == "neuron":
    from benchmarks.measure import neuron_suite
    rows = neuron_suite(args.num_steps, args.batch)
    print("\n| T | B | variant | min ms | median ms | first call s |\n|---|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['num_steps']} | {r['batch']} | {r['variant']} | {r['min_ms']:.1f} | "
            f"{r['median_ms']:.1f} | {r['first_call_s']:.1f} |")
    report = {"machine": mach, "args": {k: v for k, v in vars(args).items() if k != "case"},
              "neuron": rows}
    if args.out:
      with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return report
  runs: dict[Case, list[dict[str, Any]]] = {c: [] for c in cases(args)}
  for rep in range(args.repeats):
    for case in runs:
      r = _run_isolated(case, args) if args.isolate else run_case(case, steps=args.steps,
                                                                     warmup=args.warmup)
      runs[case].append(r)
      msg = r.get("error") or (f"{r['images_per_s']:.2f} img/s, step {r['step_s_median']:.3f} "
                               f"s, compile {r['trace_compile_s']:.1f} s, XLA peak "
                               f"{_mb(r['xla_peak_bytes'])} MB")
      print(f"  [{rep + 1}/{args.repeats}] {case.label}: {msg}", flush=True)
  results = []
  for case, rs in runs.items():
    r = _combine(rs)
    r["case"] = dataclasses.asdict(case)
    peak = args.peak_flops or device_peak(mach["device_kind"], case.dtype)
    if peak and r.get("achieved_flops_per_s"):
      r["peak_flops"] = peak
      r["fraction_of_peak"] = r["achieved_flops_per_s"] / peak
    results.append(r)
  summ = summary(results, args)
  print()
  print(table(results))
  for key, s in summ.items():
    print(f"\n{key}:")
    for k, v in s.items():
      print(f"  {k}: {_fmt(v)}")
  report = {"machine": mach, "args": {k: v for k, v in vars(args).items() if k != "case"},
            "results": results, "summary": summ}
  markdown = None
  if args.device_check:
    for r in results:
      bound = plan_bound_s(mach["device_kind"], r["case"]["dtype"], r.get("flops_per_step"))
      if bound and "error" not in r:
        r["plan_bound_s"], r["fraction_of_plan_bound"] = bound, bound / r["step_s_median"]
    if not args.skip_training_run:
      report["tiny_training_run"] = tiny_training_run()
    markdown = device_check_table(results, mach, report.get("tiny_training_run"))
    print("\n" + markdown)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
    print(f"\nwrote {args.out}")
    if markdown is not None:
      md = os.path.splitext(args.out)[0] + ".md"
      with open(md, "w") as f:
        f.write(markdown + "\n")
      print(f"wrote {md}")
  return report


def device_check_table(results: list[dict[str, Any]], mach: dict[str, Any],
                       training: dict[str, Any] | None) -> str:
  """The device check as markdown: one row per case, then the :tiny training run."""
  lines = [f"Device check on {mach['num_devices']} x {mach['device_kind']} [{mach['platform']}]"
           f", jax {mach['jax']}", "",
           "| case | B | step s | TFLOP/s | of peak | of plan's bound | compile s | "
           "peak memory MB |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    label = Case(**r["case"]).label
    if "error" in r:
      lines.append(f"| {label} | {r['case']['batch']} | error: {r['error'][:80]} | | | | | |")
      continue
    mem = r["device_peak_bytes"] or r["xla_peak_bytes"]
    frac = f"{100 * r['fraction_of_peak']:.1f} %" if r.get("fraction_of_peak") else "-"
    plan = (f"{100 * r['fraction_of_plan_bound']:.1f} %" if r.get("fraction_of_plan_bound")
            else "-")
    tf = f"{r['achieved_flops_per_s'] / 1e12:.3f}" if r.get("achieved_flops_per_s") else "-"
    lines.append(f"| {label} | {r['case']['batch']} | {r['step_s_median']:.3f} | {tf} | "
                 f"{frac} | {plan} | {r['trace_compile_s']:.1f} | {_mb(mem)} |")
  if training is not None:
    acc = training.get("test_accuracy")
    lines += ["", f":tiny training run (cfsnn_jax.main, configs/default.py:tiny): exit code "
              f"{training['returncode']}, {training['wall_s']:.1f} s, test accuracy "
              f"{'-' if acc is None else f'{acc:.4f}'}"]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
