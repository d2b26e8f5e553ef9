"""Which bfloat16 paths XLA:CPU runs faster than float32 (``python -m benchmarks.bf16_paths``).

  python -m benchmarks.bf16_paths                       # the figures of docs/PERFORMANCE.md
  python -m benchmarks.bf16_paths --n=4 --hw=8 --c=16   # tiny (tests)

Two measurements, each compiled with the CPU settings ``python -m cfsnn_jax.main`` applies
(``cfsnn_jax.backends.xla_cpu``) and, where named, another XLA option set; the cases of one
table run round-robin in this process (median wall and process CPU time of ``--reps`` calls):

- ``dots``: ``[M, K] x [K, N]`` (``M = n*hw*hw``, ``K = 9c``, ``N = c``: one 3x3 convolution
  as a matmul) in float32, in bfloat16 with float32 accumulation
  (``preferred_element_type``) and bfloat16 out, under YNNPACK dots (the CLI's setting),
  XLA's own dots and oneDNN dots. Each row says whether the optimised HLO keeps a library
  fusion and how many ``convert`` ops it added.
- ``conv``: forward + both gradients of a 3x3 ``[n, hw, hw, c] -> c`` convolution: XLA's
  convolution in float32 and bfloat16, and the same convolution as im2col + one matmul
  (``conv_as_matmul``: the 9 shifted windows concatenated along channels, autodiff for the
  gradients) in both dtypes, plus the im2col copy alone. ``rel_err`` is the largest error
  of output and gradients against XLA's float32 convolution, relative to its largest value.
  Where ``cfsnn_jax.backends.onednn_conv`` is enabled, the models' own convolution too
  (``onednn_conv``: oneDNN gradients, and in bfloat16 a oneDNN forward: the path that makes bf16 faster).

The question it answers: can ``compute_dtype=bfloat16`` beat float32 on this CPU? Only
where a bf16 kernel runs natively *and* the data movement around it costs less than it saves:
XLA's own kernels do not get there; oneDNN's convolutions do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from typing import Any, Callable

from cfsnn_jax.backends import xla_cpu

_YNN = "xla_cpu_experimental_ynn_fusion_type"


def option_sets() -> dict[str, dict[str, Any]]:
  return {
      "ynn_dot": xla_cpu.compiler_options(),  # what the CLI applies
      "xla_dot": {_YNN: "LIBRARY_FUSION_TYPE_REDUCE"},
      "onednn_dot": {"xla_cpu_use_onednn": True,
                     "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
                     _YNN: "LIBRARY_FUSION_TYPE_REDUCE"},
  }


def conv_xla(x, w):
  import jax
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_onednn(x, w):
  """The models' convolution (``backends.onednn_conv``): oneDNN gradients, bf16 forward."""
  from cfsnn_jax.backends import onednn_conv
  return onednn_conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))


def im2col_3x3(x):
  """``[n, h, w, c] -> [n*h*w, 9c]``: the 9 shifted windows of a SAME 3x3 convolution."""
  import jax.numpy as jnp
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
  return jnp.concatenate(cols, axis=-1).reshape(n * h * w, 9 * c)


def conv_as_matmul(x, w):
  """The 3x3 SAME convolution as im2col + one matmul (float32 accumulation)."""
  import jax.numpy as jnp
  n, h, wd, _ = x.shape
  y = jnp.dot(im2col_3x3(x), w.reshape(-1, w.shape[-1]), preferred_element_type=jnp.float32)
  return y.astype(x.dtype).reshape(n, h, wd, w.shape[-1])


def _fwd_bwd(conv: Callable) -> Callable:
  import jax

  def f(x, w, g):
    y, vjp = jax.vjp(conv, x, w)
    return (y,) + vjp(g)
  return f


def _time(cases: dict[str, tuple[Any, tuple]], reps: int) -> dict[str, dict[str, float]]:
  import jax
  for fn, args in cases.values():
    jax.block_until_ready(fn(*args))
  wall = {k: [] for k in cases}
  cpu = {k: [] for k in cases}
  for _ in range(reps):
    for k, (fn, args) in cases.items():
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*args))
      wall[k].append(time.perf_counter() - t0)
      cpu[k].append(time.process_time() - c0)
  return {k: {"wall_ms": statistics.median(wall[k]) * 1e3,
              "cpu_ms": statistics.median(cpu[k]) * 1e3} for k in cases}


def dots(n: int, hw: int, c: int, reps: int) -> list[dict[str, Any]]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  M, K, N = n * hw * hw, 9 * c, c
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((M, K)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((K, N)), jnp.float32)
  cases, info = {}, {}
  for opt_name, opts in option_sets().items():
    for dt, acc in (("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16")):
      args = (a.astype(dt), b.astype(dt))
      fn = jax.jit(lambda x, y, acc=acc: jnp.dot(x, y, preferred_element_type=acc))
      compiled = fn.lower(*args).compile(compiler_options=opts)
      hlo = compiled.as_text()
      key = f"{opt_name} {dt} acc={acc}"
      cases[key] = (compiled, args)
      info[key] = {"options": opt_name, "dtype": dt, "accumulate": acc,
                   "library_fusion": "kind=kCustom" in hlo,
                   "converts": len(re.findall(r" convert\(", hlo))}
  times = _time(cases, reps)
  flops = 2 * M * K * N
  return [dict(info[k], case=k, shape=[M, K, N], **times[k],
               gflops=flops / (times[k]["wall_ms"] / 1e3) / 1e9) for k in cases]


def conv(n: int, hw: int, c: int, reps: int) -> list[dict[str, Any]]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, hw, hw, c)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.05, jnp.float32)
  g = jnp.asarray(rng.standard_normal((n, hw, hw, c)), jnp.float32)
  ref = jax.jit(_fwd_bwd(conv_xla))(x, w, g)
  opts = xla_cpu.compiler_options()
  cases, errs = {}, {}
  from cfsnn_jax.backends import onednn_conv
  variants = [("xla_conv", conv_xla), ("conv_as_matmul", conv_as_matmul)]
  if onednn_conv.enabled():  # what the models use on this machine
    variants.append(("onednn_conv", conv_onednn))
  for name, fn in variants:
    for dt in ("float32", "bfloat16"):
      args = tuple(v.astype(dt) for v in (x, w, g))
      compiled = jax.jit(_fwd_bwd(fn)).lower(*args).compile(compiler_options=opts)
      got = compiled(*args)
      errs[f"{name} {dt}"] = max(
          float(jnp.max(jnp.abs(p.astype(jnp.float32) - q)) / (jnp.max(jnp.abs(q)) + 1e-12))
          for p, q in zip(got, ref))
      cases[f"{name} {dt}"] = (compiled, args)
  xb = x.astype("bfloat16")
  cases["im2col copy alone bfloat16"] = (
      jax.jit(im2col_3x3).lower(xb).compile(compiler_options=opts), (xb,))
  times = _time(cases, reps)
  flops = 3 * 2 * n * hw * hw * 9 * c * c  # forward + input and weight gradients
  return [dict(case=k, shape=[n, hw, hw, c], **times[k], rel_err=errs.get(k),
               gflops=(flops / (times[k]["wall_ms"] / 1e3) / 1e9 if k in errs else None))
          for k in cases]


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(prog="python -m benchmarks.bf16_paths", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n", type=int, default=32, help="images (T*B) of the convolution")
  p.add_argument("--hw", type=int, default=32, help="feature-map height = width")
  p.add_argument("--c", type=int, default=128, help="channels in = out")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  tuning = xla_cpu.apply()
  from benchmarks.measure import machine
  report = {"machine": dict(machine(), cpu_tuning=tuning, loadavg_before=os.getloadavg())}
  report["dots"] = dots(a.n, a.hw, a.c, a.reps)
  report["conv"] = conv(a.n, a.hw, a.c, a.reps)
  report["machine"]["loadavg_after"] = os.getloadavg()
  m = report["machine"]
  print(f"machine: {m['cpu']}, {m['cpu_cores']} cores, jax {m['jax']}; load average "
        f"{m['loadavg_before'][0]:.2f} -> {m['loadavg_after'][0]:.2f}")
  print("\n| dot [M, K] x [K, N] | ms wall | ms CPU | GFLOP/s | library fusion | converts |")
  print("|---|---|---|---|---|---|")
  for r in report["dots"]:
    print(f"| {r['case']} {r['shape']} | {r['wall_ms']:.1f} | {r['cpu_ms']:.1f} | "
          f"{r['gflops']:.0f} | {r['library_fusion']} | {r['converts']} |")
  print("\n| 3x3 conv, forward + gradients | ms wall | ms CPU | GFLOP/s | rel. error |")
  print("|---|---|---|---|---|")
  for r in report["conv"]:
    gf = f"{r['gflops']:.0f}" if r["gflops"] else "-"
    err = f"{r['rel_err']:.1e}" if r["rel_err"] is not None else "-"
    print(f"| {r['case']} {r['shape']} | {r['wall_ms']:.1f} | {r['cpu_ms']:.1f} | {gf} | {err} |")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  main()
