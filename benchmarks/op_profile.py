"""Where a compiled XLA:CPU step spends its time, per op class (``python -m benchmarks.op_profile``).

  python -m benchmarks.op_profile --model=resnet19_tet --batch=8,16 --xla=default,tuned

Each (batch, option set) compiles the case's train step (``measure.compile_case``) with
``xla_cpu_enable_xprof_traceme`` so that every thunk of the executable appears in a
``jax.profiler`` trace under its HLO instruction name; the steps of all variants run
round-robin in this one process. Each instruction of the entry computation is put in one
class from the optimised HLO (``classify``):

- ``conv_fwd`` / ``conv_dgrad`` / ``conv_wgrad``: convolutions (forward; input gradient,
  i.e. the transposed conv with reversed kernel; weight gradient, whose window is the feature
  map), by library (``ynn``: a ``__ynn_fusion``, else XLA's own Eigen-backed conv);
- ``dot``: matmuls; ``copy``: layout transposes and copies; ``reduce``: fusions with a
  reduction (BatchNorm statistics, PN moments, gradient sums); ``elementwise``: the other
  loop fusions (neurons, BN apply, optimizer); ``other``.

The per-class time is the summed wall duration of those thunks on the executing thread, per
step (median over steps), so it includes waiting for the intra-op threads; the CPU
utilisation of each step is reported next to it.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import tempfile
import time
from typing import Any

CLASSES = ("conv_fwd", "conv_dgrad", "conv_wgrad", "dot", "copy", "reduce", "elementwise",
           "other")

_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\s([\w\-]+)\(")


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
  comps: dict[str, list[str]] = {}
  entry, current = "", None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m:
      current = m.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif current is not None and line.strip() == "}":
      current = None
    elif current is not None:
      comps[current].append(line)
  return comps, entry


def _conv_class(line: str) -> str:
  window = re.search(r"window=\{size=([\dx]+)", line)
  labels = re.search(r"dim_labels=(\S+?)[,\s]", line)
  size = [int(v) for v in window.group(1).split("x")] if window else []
  if labels and labels.group(1).startswith("f01b") or labels and "->01bf" in labels.group(1):
    return "conv_wgrad"
  if size and max(size) > 7:  # the window spans the feature map: a weight gradient
    return "conv_wgrad"
  if "transpose(" in line or "lhs_dilate" in line:
    return "conv_dgrad"
  return "conv_fwd"


def classify(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Entry-computation instruction name -> (class, library) of the optimised module."""
  comps, entry = _computations(hlo_text)

  def body(name: str, seen: set) -> list[str]:
    if name in seen or name not in comps:
      return []
    seen.add(name)
    out = list(comps[name])
    for line in comps[name]:
      for callee in re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line):
        out += body(callee, seen)
    return out

  out = {}
  for line in comps.get(entry, []):
    m = _INSTR.match(line)
    if not m:
      continue
    name, op = m.group(1), m.group(2)
    if op in ("parameter", "tuple", "get-tuple-element", "bitcast", "constant"):
      continue
    lib = "ynn" if "__ynn_fusion" in line else ("onednn" if "onednn" in line.lower() else "xla")
    lines = [line] + body_of(line, body)
    convs = [x for x in lines if " convolution(" in x]
    if convs:
      out[name] = (_conv_class(convs[0]), lib)
    elif any(" dot(" in x for x in lines) or op == "dot":
      out[name] = ("dot", lib)
    elif op in ("copy", "transpose") or re.match(r"(wrapped_)?(transpose|copy)", name) or (
        "copy_fusion" in name and not any(" reduce(" in x for x in lines)):
      out[name] = ("copy", lib)
    elif any(" reduce(" in x or " reduce-window(" in x for x in lines):
      out[name] = ("reduce", lib)
    elif op == "fusion" or op in ("add", "multiply", "select", "convert", "broadcast"):
      out[name] = ("elementwise", lib)
    else:
      out[name] = ("other", lib)
  return out


def body_of(line: str, body) -> list[str]:
  callees = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)
  out: list[str] = []
  for c in callees:
    out += body(c, set())
  return out


def thunk_durations(trace_dir: str) -> list[tuple[str, int, int]]:
  """(name, start_ns, duration_ns) of every event of the executing threads in the newest
  ``*.xplane.pb`` under ``trace_dir``."""
  from jax.profiler import ProfileData
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  pd = ProfileData.from_file(paths[-1])
  out = []
  for plane in pd.planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      for e in line.events:
        if not e.name.startswith("end: ") and not e.name.startswith("ThreadpoolListener"):
          out.append((e.name, e.start_ns, e.duration_ns))
  return out


def profile_variants(model: str, batches: list[int], variants: dict[str, dict[str, Any]],
                     steps: int, dtype: str = "float32", num_steps: int = 4,
                     tiny: bool = False) -> list[dict[str, Any]]:
  """Per (batch, variant): per-class milliseconds per step (median over ``steps``), step wall
  and CPU seconds; variants and batches interleaved step by step."""
  import jax
  from benchmarks.cases import Case
  from benchmarks.measure import compile_case
  runs = []
  for B in batches:
    for name, opts in variants.items():
      case = Case(model, num_steps, B, dtype, tiny=tiny)
      c = compile_case(case, dict(opts, xla_cpu_enable_xprof_traceme=True))
      state, _ = c["step"](c["state"], c["batch"])  # warm-up
      jax.block_until_ready(state)
      runs.append(dict(batch=B, variant=name, classes=classify(c["compiled"].as_text()),
                       c=c, state=state, per_step=[], wall=[], cpu=[], compile_s=c["compile_s"]))
  for _ in range(steps):
    for r in runs:
      with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        t0, c0 = time.perf_counter(), time.process_time()
        r["state"], m = r["c"]["step"](r["state"], r["c"]["batch"])
        jax.block_until_ready((r["state"], m))
        r["wall"].append(time.perf_counter() - t0)
        r["cpu"].append(time.process_time() - c0)
        jax.profiler.stop_trace()
        events = thunk_durations(d)
      acc = collections.Counter()
      for name, _, dur in events:
        if name in r["classes"]:
          cls, lib = r["classes"][name]
          acc[cls] += dur
          acc[f"{cls}/{lib}"] += dur
      r["per_step"].append(acc)
  out = []
  for r in runs:
    keys = sorted({k for acc in r["per_step"] for k in acc})
    ms = {k: statistics.median(acc.get(k, 0) for acc in r["per_step"]) / 1e6 for k in keys}
    out.append(dict(batch=r["batch"], variant=r["variant"], ms_per_step=ms,
                    wall_s=statistics.median(r["wall"]), cpu_s=statistics.median(r["cpu"]),
                    cpu_util=[c / w for c, w in zip(r["cpu"], r["wall"])],
                    compile_s=r["compile_s"], loadavg=os.getloadavg()))
  return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  from benchmarks import xla_cpu_variants
  p = argparse.ArgumentParser(prog="python -m benchmarks.op_profile", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="resnet19_tet")
  p.add_argument("--batch", default="8,16")
  p.add_argument("--num_steps", type=int, default=4, help="T")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--xla", default="default,tuned",
                 help=f"comma list of option sets: {', '.join(xla_cpu_variants.VARIANTS)}")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  variants = {v: xla_cpu_variants.VARIANTS[v] for v in a.xla.split(",")}
  batches = [int(b) for b in a.batch.split(",")]
  print(f"load average before: {os.getloadavg()}", flush=True)
  rows = profile_variants(a.model, batches, variants, a.steps, a.dtype, a.num_steps, a.tiny)
  print(f"load average after: {os.getloadavg()}")
  print("\n| batch | variant | step s | CPU s | " + " | ".join(CLASSES) + " |")
  print("|---|---|---|---|" + "---|" * len(CLASSES))
  for r in rows:
    ms = r["ms_per_step"]
    print(f"| {r['batch']} | {r['variant']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
          + " | ".join(f"{ms.get(c, 0):.0f}" for c in CLASSES) + " |")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
