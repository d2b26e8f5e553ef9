"""Measures one benchmark case: compile time, XLA memory, step time of ``steps.train_step``.

The step is the training loop's own (``steps.make_steps``: donated state, replicated outputs,
batch sharded over a ``data`` mesh of every device).
It is compiled ahead of time (``lower`` + ``compile``, timed separately) and the compiled
executable runs the warm-up and timed steps: an executable cannot recompile, so a state whose
structure, dtypes or shardings changed between steps would fail here instead of silently
compiling again.

Memory:
- ``xla_peak_bytes`` = argument + output - aliased + temp bytes of
  ``compiled.memory_analysis()``: what XLA's buffer assignment needs for one step (the state
  counted once thanks to donation). Deterministic; the figure the targets use on CPU.
- ``rss_peak_bytes``: the process's resident-set high-water mark (``getrusage``) after the
  steps; includes the Python/JAX runtime and compilation, so only meaningful per process.
- ``device_peak_bytes``: ``device.memory_stats()['peak_bytes_in_use']`` where the backend
  reports it (GPU / TPU); ``None`` on CPU.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from typing import Any

import jax
import numpy as np

from benchmarks.cases import Case, case_config, dataset_info
from cfsnn_jax.backends import onednn_conv
from cfsnn_jax.training import steps as step_builder  # run_case has an argument named steps


def machine() -> dict[str, Any]:
  """CPU model, core count, library versions and devices of this process, and whether its
  convolution gradients run oneDNN's kernels (``cfsnn_jax.backends.onednn_conv``)."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import flax
  import jaxlib
  dev = jax.devices()
  return {"cpu": cpu, "cpu_cores": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "platform": dev[0].platform, "device_kind": dev[0].device_kind,
          "num_devices": len(dev), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "onednn_conv": onednn_conv.status()}


def synthetic_batch(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
  """A fixed random batch in the loop's layout (example-major; events ``[B, T, ...]``)."""
  info = dataset_info(case)
  rng = np.random.default_rng(seed)
  T = case.num_steps
  lead = (case.batch,) if info.static_input else (case.batch, T)
  image = rng.random(lead + tuple(info.input_shape), dtype=np.float32)
  if not info.static_input:  # event frames are spike counts
    image = (image < 0.2).astype(np.float32)
  label = rng.integers(0, info.num_classes, (case.batch,)).astype(np.int32)
  return {"image": image, "label": label}


def _memory(compiled) -> dict[str, Any]:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    m = None
  if m is None:
    return {"xla_peak_bytes": None}
  out = {k: int(getattr(m, k + "_in_bytes", 0)) for k in
         ("argument_size", "output_size", "alias_size", "temp_size", "generated_code_size")}
  out["xla_peak_bytes"] = (out["argument_size"] + out["output_size"] - out["alias_size"]
                           + out["temp_size"])
  return out


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops")) if cost and cost.get("flops") else None
  except Exception:  # noqa: BLE001
    return None


def compile_case(case: Case, compiler_options: dict[str, Any] | None = None,
                 devices: list | None = None) -> dict[str, Any]:
  """Builds the case's state and batch and compiles its train step ahead of time (with
  ``compiler_options``: XLA debug options for this executable only; on ``devices``, default
  all, as the training loop does). Returns ``step`` (the
  compiled executable), ``state``, ``batch``, ``num_params`` and the build / lower / compile
  seconds."""
  config = case_config(case)
  info = dataset_info(case)
  t0 = time.perf_counter()
  setup = step_builder.create_train_state(config, info, total_steps=1000)
  num_params = setup.num_params
  build_s = time.perf_counter() - t0
  built = step_builder.make_steps(config, setup, devices)
  state = built.place(setup.state)
  batch = built.to_global(synthetic_batch(case))
  step_fn = built.train
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile(compiler_options=compiler_options or None)
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled)
  if "CfsnnConv" in compiled.as_text():  # XLA does not count custom calls' FLOPs: count the
    with onednn_conv.xla_only():  # same step traced afresh on XLA's convolutions
      cost = step_builder.make_steps(config, setup, devices).train.lower(
          state, batch).cost_analysis()
    flops = float(cost["flops"]) if cost and cost.get("flops") else None
  return {"step": compiled, "compiled": compiled, "state": state, "batch": batch,
          "num_params": int(num_params), "build_s": build_s, "lower_s": lower_s,
          "compile_s": compile_s, "flops": flops}


def run_case(case: Case, *, steps: int = 5, warmup: int = 1) -> dict[str, Any]:
  """Compiles and times one case; returns a flat dict of results (JSON-serialisable)."""
  c = compile_case(case)
  compiled, state, batch, num_params = c["step"], c["state"], c["batch"], c["num_params"]
  build_s, lower_s, compile_s = c["build_s"], c["lower_s"], c["compile_s"]

  times, cpu_times = [], []
  metrics = None
  for i in range(warmup + steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
      cpu_times.append(time.process_time() - c0)
  loss = float(metrics["loss"]) if metrics is not None else float("nan")
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  median = statistics.median(times) if times else float("nan")
  flops = c["flops"]
  result = {
      "model": case.model, "tiny": case.tiny, "ann": case.ann,
      "num_steps": case.num_steps, "batch": case.batch,
      "dtype": case.dtype, "remat": case.remat, "num_params": int(num_params),
      "build_s": build_s, "lower_s": lower_s, "compile_s": compile_s,
      "trace_compile_s": lower_s + compile_s,
      "step_s_median": median, "step_s_min": min(times, default=float("nan")),
      "step_s_max": max(times, default=float("nan")),
      "step_s_all": times, "images_per_s": case.batch / median,
      "cpu_s_median": statistics.median(cpu_times) if cpu_times else float("nan"),
      "cpu_s_all": cpu_times,
      "flops_per_step": flops,
      "achieved_flops_per_s": flops / median if flops and times else None,
      "loss_after": loss, "finite": bool(np.isfinite(loss)),
      "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "device_peak_bytes": (int(stats["peak_bytes_in_use"])
                            if stats and "peak_bytes_in_use" in stats else None),
  }
  result.update(_memory(compiled))
  return result


def neuron_suite(num_steps: list[int], batch: int, reps: int = 9) -> list[dict[str, Any]]:
  """The neuron alone: jitted value-and-grad of a CF layer (D = 4, soft reset, per-step LSG,
  PN moments) on ``[T, batch, 32, 32, 128]`` float32, for the BPTT / time-loop variants, and
  a ReLU on the same tensor as the floor. Min and median wall time of ``reps`` calls."""
  import jax.numpy as jnp
  from cfsnn_jax.neuron import layers, equations as neurons
  spec = neurons.resolve_spec("cf")

  def before(x, a):  # autodiff of the scan, statistics from the materialised H
    S, H, _ = neurons.run_neuron(x, spec, alpha_T=a, decay=0.5)  # the reference
    axes = tuple(range(1, H.ndim))
    return S, jnp.mean(jax.nn.relu(H), axis=axes) - jnp.mean(jax.nn.relu(-H), axis=axes)

  def fused(unroll):
    def f(x, a):
      S, aux, _ = layers.neuron_forward(x, a, jnp.float32(0.5), None, spec=spec,
                                        training=True, unroll=unroll, pn_kappa=1.0)
      return S, aux.h_pos_T - aux.h_neg_T
    return f

  variants = {"autodiff scan + stats of H (before)": before,
              "fused BPTT, lax.scan forward": fused(1),
              "fused BPTT, Python-loop forward (default T<=16)": fused(True),
              "ReLU (floor)": lambda x, a: (jax.nn.relu(x), jnp.zeros_like(a))}
  out = []
  for T in num_steps:
    x = jax.random.normal(jax.random.key(0), (T, batch, 32, 32, 128))
    a = jnp.full((T,), 4.0)
    for name, fn in variants.items():
      def loss(x, a, fn=fn):
        S, pn = fn(x, a)
        return jnp.sum(S * 0.3) + jnp.sum(pn ** 2)
      g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
      t0 = time.perf_counter()
      jax.block_until_ready(g(x, a))
      compile_s = time.perf_counter() - t0
      times = []
      for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(g(x, a))
        times.append(time.perf_counter() - t0)
      out.append({"num_steps": T, "batch": batch, "variant": name,
                  "min_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times),
                  "first_call_s": compile_s})
  return out
