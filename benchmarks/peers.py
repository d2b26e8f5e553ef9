"""cfsnn_jax against SpikingJelly on the same models, one invocation, interleaved.

  pip install -e .[peers]        # torch (CPU) + spikingjelly
  python -m benchmarks.peers --models=resnet19_tet,vggsnn_tet --batch=8,16 --steps=5

Both frameworks build the same network: TET's ResNet-19 (64-channel stem, stages 3-3-2 of
widths 128-256-512, conv1x1 + BN shortcut where the shape changes, FC 256 + neuron, FC 100:
12,653,988 parameters) and TET's VGGSNN (2x48x48 event frames, 10 classes), with LIF
tau = 2, hard reset to 0, SpikingJelly's ``decay_input`` charge, fixed sigmoid surrogate
alpha = 4, T = 4, float32, CE on the time-mean logits, SGD (momentum 0.9). The parameter
counts are asserted equal before anything is timed. The static image enters both networks the
same way: the stem conv runs once per image and its output is repeated over T.

cfsnn_jax runs its train step exactly as the training loop jits it (``measure.compile_case``,
with the CPU settings ``python -m cfsnn_jax.main`` applies, ``cfsnn_jax.backends.xla_cpu``);
SpikingJelly runs eager PyTorch (multi-step mode; its default torch backend on CPU):
forward, backward, optimizer step, ``reset_net``. After a warm-up step each, the steps
alternate framework by framework; every step records wall time, process CPU time and the
CPU utilisation (cores busy), so a step that was starved by other processes can be
discarded: ``--min_util`` (default 0: keep all) drops steps below it from the medians.
The ratio is SpikingJelly's step time over cfsnn_jax's (> 1: cfsnn_jax is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

PEER_MODELS = ("resnet19_tet", "vggsnn_tet")


def _sj_modules():
  import torch
  from spikingjelly.activation_based import functional, layer, neuron, surrogate
  return torch, functional, layer, neuron, surrogate


def _lif(neuron, surrogate):
  return neuron.LIFNode(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0,
                        surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=False,
                        step_mode="m")


def build_sj_resnet19(num_classes: int, num_steps: int, stem: int, widths, stage_blocks,
                      head_hidden: int):
  """SpikingJelly's TET ResNet-19 (multi-step modules on ``[T, B, C, H, W]``)."""
  torch, functional, layer, neuron, surrogate = _sj_modules()
  nn = torch.nn

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c1 = layer.Conv2d(cin, cout, 3, stride, 1, bias=False, step_mode="m")
      self.b1 = layer.BatchNorm2d(cout, step_mode="m")
      self.s1 = _lif(neuron, surrogate)
      self.c2 = layer.Conv2d(cout, cout, 3, 1, 1, bias=False, step_mode="m")
      self.b2 = layer.BatchNorm2d(cout, step_mode="m")
      self.down = None
      if stride != 1 or cin != cout:
        self.down = nn.Sequential(layer.Conv2d(cin, cout, 1, stride, bias=False, step_mode="m"),
                                  layer.BatchNorm2d(cout, step_mode="m"))
      self.s2 = _lif(neuron, surrogate)

    def forward(self, x):
      y = self.b2(self.c2(self.s1(self.b1(self.c1(x)))))
      return self.s2(y + (self.down(x) if self.down is not None else x))

  class ResNet19(nn.Module):
    def __init__(self):
      super().__init__()
      self.T = num_steps
      self.stem_conv = nn.Conv2d(3, stem, 3, 1, 1, bias=False)  # once per image (encoder)
      self.stem_bn = layer.BatchNorm2d(stem, step_mode="m")
      self.stem_sn = _lif(neuron, surrogate)
      blocks, cin = [], stem
      for n, w, s in zip(stage_blocks, widths, (1, 2, 2)):
        for i in range(n):
          blocks.append(Block(cin, w, s if i == 0 else 1))
          cin = w
      self.blocks = nn.Sequential(*blocks)
      self.fc = layer.Linear(cin, head_hidden, step_mode="m")
      self.fc_sn = _lif(neuron, surrogate)
      self.head = layer.Linear(head_hidden, num_classes, step_mode="m")

    def forward(self, x_bchw):
      x = self.stem_conv(x_bchw).unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
      x = self.blocks(self.stem_sn(self.stem_bn(x)))
      x = x.mean(dim=(3, 4))
      return self.head(self.fc_sn(self.fc(x)))  # [T, B, K]

  return ResNet19(), functional


def build_sj_vggsnn(num_classes: int, num_steps: int, layout, input_hw: int):
  """SpikingJelly's TET VGGSNN on event frames ``[T, B, 2, H, W]``."""
  torch, functional, layer, neuron, surrogate = _sj_modules()
  nn = torch.nn
  mods, cin, pools = [], 2, 0
  for v in layout:
    if v == "A":
      mods.append(layer.AvgPool2d(2, 2, step_mode="m"))
      pools += 1
      continue
    mods += [layer.Conv2d(cin, v, 3, 1, 1, bias=False, step_mode="m"),
             layer.BatchNorm2d(v, step_mode="m"), _lif(neuron, surrogate)]
    cin = v
  side = input_hw // 2 ** pools
  mods += [layer.Flatten(start_dim=1, step_mode="m"),
           layer.Linear(cin * side * side, num_classes, step_mode="m")]
  return nn.Sequential(*mods), functional


def _sj_model(name: str, tiny: bool, num_steps: int):
  from benchmarks.cases import BENCH_MODELS
  spec = BENCH_MODELS[name]
  model = dict(spec["model"], **(spec["tiny"] if tiny else {}))
  info = spec["info"]
  if name == "resnet19_tet":
    return build_sj_resnet19(info.num_classes, num_steps, model["stem_width"],
                             model.get("widths", (128, 256, 512)),
                             model.get("stage_blocks", (3, 3, 2)),
                             model.get("head_hidden", 256))
  from cfsnn_jax.models.vgg import VGGSNN_LAYOUT
  hw = (spec["tiny_input"] if tiny else info.input_shape)[0]
  return build_sj_vggsnn(info.num_classes, num_steps, model.get("layout", VGGSNN_LAYOUT), hw)


class SJRunner:
  """One SpikingJelly training step on a fixed batch (the same numbers cfsnn_jax gets)."""

  def __init__(self, name: str, batch: dict, num_steps: int, tiny: bool, threads: int):
    import numpy as np
    torch = _sj_modules()[0]
    torch.manual_seed(0)
    if threads:
      torch.set_num_threads(threads)
    self.torch = torch
    self.model, self.functional = _sj_model(name, tiny, num_steps)
    self.num_params = sum(p.numel() for p in self.model.parameters())
    x = np.asarray(batch["image"])
    if x.ndim == 4:  # static [B, H, W, C] -> [B, C, H, W]
      x = x.transpose(0, 3, 1, 2)
    else:  # events [B, T, H, W, C] -> [T, B, C, H, W]
      x = x.transpose(1, 0, 4, 2, 3)
    self.x = torch.from_numpy(np.ascontiguousarray(x))
    self.y = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    self.model.train()

  def step(self) -> float:
    torch = self.torch
    self.opt.zero_grad(set_to_none=True)
    logits = self.model(self.x).mean(0)
    loss = torch.nn.functional.cross_entropy(logits, self.y)
    loss.backward()
    self.opt.step()
    self.functional.reset_net(self.model)
    return float(loss.detach())


class JaxRunner:
  def __init__(self, name: str, batch_size: int, num_steps: int, tiny: bool):
    import jax
    from benchmarks.cases import Case
    from benchmarks.measure import compile_case, synthetic_batch
    self.jax = jax
    self.case = Case(name, num_steps, batch_size, tiny=tiny)
    self.batch_np = synthetic_batch(self.case)
    c = compile_case(self.case)
    self.compiled, self.state, self.batch = c["step"], c["state"], c["batch"]
    self.num_params, self.compile_s = c["num_params"], c["lower_s"] + c["compile_s"]

  def step(self) -> float:
    self.state, m = self.compiled(self.state, self.batch)
    self.jax.block_until_ready((self.state, m))
    return float(m["loss"])


def _timed(fn) -> dict[str, float]:
  t0, c0 = time.perf_counter(), time.process_time()
  loss = fn()
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  return {"wall_s": wall, "cpu_s": cpu, "util": cpu / wall, "loss": loss,
          "load1": os.getloadavg()[0]}


def _median(steps: list[dict[str, float]], key: str, min_util: float) -> float | None:
  kept = [s[key] for s in steps if s["util"] >= min_util]
  return statistics.median(kept) if kept else None


def compare(models: list[str], batches: list[int], steps: int, num_steps: int = 4,
            tiny: bool = False, min_util: float = 0.0, threads: int = 0) -> list[dict[str, Any]]:
  rows = []
  for name in models:
    for B in batches:
      jx = JaxRunner(name, B, num_steps, tiny)
      sj = SJRunner(name, jx.batch_np, num_steps, tiny, threads)
      if jx.num_params != sj.num_params:
        raise AssertionError(f"{name}: cfsnn_jax has {jx.num_params:,} parameters, "
                             f"SpikingJelly {sj.num_params:,}: not the same model")
      t0 = time.perf_counter()
      sj.step()  # warm-up (oneDNN primitive creation)
      sj_first = time.perf_counter() - t0
      jx.step()
      out = {"jax": [], "sj": []}
      for _ in range(steps):
        out["jax"].append(_timed(jx.step))
        out["sj"].append(_timed(sj.step))
      row = {"model": name, "batch": B, "num_steps": num_steps, "tiny": tiny,
             "num_params": jx.num_params, "jax_compile_s": jx.compile_s,
             "sj_first_step_s": sj_first, "steps": out, "min_util": min_util}
      for k in ("jax", "sj"):
        row[f"{k}_step_s"] = _median(out[k], "wall_s", min_util)
        row[f"{k}_cpu_s"] = _median(out[k], "cpu_s", min_util)
        row[f"{k}_util"] = statistics.median(s["util"] for s in out[k])
        row[f"{k}_kept"] = sum(s["util"] >= min_util for s in out[k])
      row["ratio_wall"] = (row["sj_step_s"] / row["jax_step_s"]
                           if row["sj_step_s"] and row["jax_step_s"] else None)
      row["ratio_cpu"] = (row["sj_cpu_s"] / row["jax_cpu_s"]
                          if row["sj_cpu_s"] and row["jax_cpu_s"] else None)
      rows.append(row)
      print(_line(row), flush=True)
  return rows


def _f(v, fmt):
  return "-" if v is None else format(v, fmt)


def _line(r: dict[str, Any]) -> str:
  return (f"| {r['model']}{'-tiny' if r['tiny'] else ''} | {r['batch']} | {r['num_params']:,} | "
          f"{_f(r['sj_step_s'], '.2f')} ({_f(r['sj_cpu_s'], '.2f')} CPU, util "
          f"{r['sj_util']:.2f}) | {_f(r['jax_step_s'], '.2f')} ({_f(r['jax_cpu_s'], '.2f')} CPU, "
          f"util {r['jax_util']:.2f}) | {_f(r['ratio_wall'], '.2f')}x | "
          f"{_f(r['ratio_cpu'], '.2f')}x | {r['jax_compile_s']:.1f} |")


HEADER = ("| model | batch | params | SpikingJelly s/step | cfsnn_jax s/step | ratio (wall) | "
          "ratio (CPU) | cfsnn compile s |\n|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(PEER_MODELS))
  p.add_argument("--batch", default="8,16")
  p.add_argument("--num_steps", type=int, default=4, help="T")
  p.add_argument("--steps", type=int, default=5, help="timed steps per framework")
  p.add_argument("--min_util", type=float, default=0.0,
                 help="drop steps whose process used fewer cores than this (e.g. 1.8)")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
  p.add_argument("--tiny", action="store_true", help="a few channels (tests)")
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  from cfsnn_jax.backends import xla_cpu
  tuning = xla_cpu.apply()  # what the CLI applies, before jax starts
  from benchmarks.measure import machine
  models = [m for m in a.models.split(",") if m]
  bad = [m for m in models if m not in PEER_MODELS]
  if bad:
    p.error(f"unknown peer model(s) {bad}; valid choices: {', '.join(PEER_MODELS)}")
  import spikingjelly
  import torch
  mach = dict(machine(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
              spikingjelly=getattr(spikingjelly, "__version__", "?"), cpu_tuning=tuning,
              loadavg_start=os.getloadavg())
  print(f"machine: {mach['cpu']}, {mach['cpu_cores']} cores, jax {mach['jax']}, torch "
        f"{mach['torch']} ({mach['torch_threads']} threads); cpu tuning {tuning}; load "
        f"average {mach['loadavg_start']}\n{HEADER}", flush=True)
  rows = compare(models, [int(b) for b in a.batch.split(",")], a.steps, a.num_steps, a.tiny,
                 a.min_util, a.threads)
  mach["loadavg_end"] = os.getloadavg()
  print(f"load average at the end: {mach['loadavg_end']}")
  report = {"machine": mach, "rows": rows}
  if a.out:
    with open(a.out, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  main()
