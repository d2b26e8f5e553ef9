"""Component ablation on the embedded ``mnist5k`` data: which part of the method helps?

Usage (writes ``experiments/results/ablation_mnist5k.md`` and ``.json``)::

  python -m experiments.ablation                      # every variant, seeds 0 1 2
  python -m experiments.ablation --variants=lif_fixed,full --seeds=0 --epochs=1   # quick look
  python -m experiments.ablation --variants=full --seeds=0 --tiny --workdir_root=/tmp/abl  # smoke

A quick look (fewer variants, seeds or epochs than the full run) writes its table under
``<workdir_root>/quick_look``, never over the committed ``experiments/results``.

Every variant starts from ``configs/mnist5k.py`` with the same budget (model, epochs, batch,
optimizer) and differs only in the overrides below; three seeds each. The table reports
mean +- std of the final test accuracy, the test firing rate (spikes per neuron per step), the
energy estimate (METHOD.md §7, per image) and the wall time of training. Runs that already
have a ``summary.json`` in their workdir are not repeated (the script resumes).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import mnist5k  # noqa: E402

# name -> (description, overrides). "fixed" surrogate = sigmoid alpha 4, not learned.
VARIANTS: dict[str, tuple[str, dict]] = {
    "lif_fixed": ("LIF + fixed surrogate (baseline)",
                  {"neuron.name": "lif", "neuron.surrogate_mode": "fixed", "loss.pn_weight": 0.0}),
    "lif_tet": ("LIF + fixed surrogate + TET loss",
                {"neuron.name": "lif", "neuron.surrogate_mode": "fixed", "loss.pn_weight": 0.0,
                 "loss.name": "tet"}),
    "cf": ("+ CF neuron (D=4, unsigned)",
           {"neuron.name": "cf", "neuron.surrogate_mode": "fixed", "loss.pn_weight": 0.0}),
    "cf_signed": ("+ CF neuron (D=4, signed)",
                  {"neuron.name": "cf_signed", "neuron.surrogate_mode": "fixed",
                   "loss.pn_weight": 0.0}),
    "lif_lsg": ("LIF + per-step learnable surrogate",
                {"neuron.name": "lif", "neuron.surrogate_mode": "per_step", "loss.pn_weight": 0.0}),
    "lif_pn": ("LIF + PN loss (1e-3)",
               {"neuron.name": "lif", "neuron.surrogate_mode": "fixed", "loss.pn_weight": 1e-3}),
    "cf_lsg": ("CF + per-step learnable surrogate",
               {"neuron.name": "cf", "neuron.surrogate_mode": "per_step", "loss.pn_weight": 0.0}),
    "full": ("full method: CF + per-step LSG + PN loss",
             {"neuron.name": "cf", "neuron.surrogate_mode": "per_step", "loss.pn_weight": 1e-3}),
    "full_signed": ("full method, signed CF",
                    {"neuron.name": "cf_signed", "neuron.surrogate_mode": "per_step",
                     "loss.pn_weight": 1e-3}),
    "full_tet": ("full method + TET loss",
                 {"neuron.name": "cf", "neuron.surrogate_mode": "per_step", "loss.pn_weight": 1e-3,
                  "loss.name": "tet"}),
    "dsatgo": ("DS-ATGO (PLIF 0.2, adaptive threshold, dynamic rectangular surrogate)",
               {"neuron.name": "dsatgo", "loss.pn_weight": 0.0}),
}

_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "Variants to run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs of the 4000-image training split.")
RESULTS_DIR = os.path.join(REPO, "experiments", "results")
_OUT = flags.DEFINE_string("out", "", "Output dir of the table (default: experiments/results "
                           "for the full run, every variant x seeds 0 1 2 x 3 epochs; "
                           "<workdir_root>/quick_look for anything less, so a quick look "
                           "never overwrites the committed results).")
_TINY = flags.DEFINE_bool("tiny", False, "A few steps per run on the :tiny branch (smoke).")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", os.path.join(REPO, "workdirs", "ablation"),
                                    "Parent of the runs' workdirs.")


def variant_config(name: str, seed: int, epochs: int, tiny: bool = False):
  config = mnist5k.get_config("tiny" if tiny else None)
  if not tiny:
    config.model.channels = (16, 32)
    config.model.hidden = 128
  config.num_epochs = epochs
  config.seed = seed
  config.progress_bar = False
  config.checkpoint_every_steps = 10 ** 9  # only the final checkpoint
  for key, value in VARIANTS[name][1].items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = getattr(node, p)
    setattr(node, leaf, value)
  return config


def run_one(name: str, seed: int, epochs: int, workdir: str, tiny: bool = False) -> dict:
  from cfsnn_jax import run
  done = os.path.join(workdir, "ablation_run.json")
  if os.path.exists(done):
    with open(done) as f:
      return _with_per_step_stats(json.load(f), workdir)
  config = variant_config(name, seed, epochs, tiny)
  t0 = time.perf_counter()
  summary = run.run(config, workdir).summary  # training + the end-of-run report (analysis.json)
  wall = time.perf_counter() - t0
  row = {"variant": name, "seed": seed, "test_accuracy": summary["test_accuracy"],
         "firing_rate": summary["test_firing_rate"], "train_time_s": summary["train_time_s"],
         "wall_s": wall, "energy_mj": summary["energy_mj_per_image"],
         "grad_available_share": summary["grad_available_share"]}
  with open(done, "w") as f:
    json.dump(row, f, indent=2)
  return _with_per_step_stats(row, workdir)


def _with_per_step_stats(row: dict, workdir: str) -> dict:
  """Adds the per-layer, per-step firing rates (eval) and gradient-available shares (train
  mode) that the end-of-run report wrote to ``analysis.json``."""
  with open(os.path.join(workdir, "analysis.json")) as f:
    analysis = json.load(f)
  return dict(row, layers=analysis["eval"]["layers"], rate_LT=analysis["eval"]["rate_LT"],
              grad_share_LT=analysis["train"]["grad_share_LT"])


def _fmt(values, scale=1.0, digits=2):
  if len(values) == 1:
    return f"{values[0] * scale:.{digits}f}"
  return f"{statistics.mean(values) * scale:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def write_table(rows: list[dict], out_dir: str, epochs: int, seeds: list[int]) -> str:
  os.makedirs(out_dir, exist_ok=True)
  lines = [
      "# Ablation on mnist5k (embedded, 4000 train / 1000 test)", "",
      f"Command: `python -m experiments.ablation --epochs={epochs} "
      f"--seeds={','.join(map(str, seeds))}`  ",
      f"Budget per run: `configs/mnist5k.py` with conv 16-32, FC 128, T = 4, {epochs} epochs, "
      "batch 64, AdamW 2e-3 cosine; seeds "
      f"{', '.join(map(str, seeds))}; 2-core CPU.", "",
      "| variant | description | test accuracy (%) | firing rate | energy (µJ / image) | "
      "train time (s) |",
      "|---|---|---|---|---|---|"]
  for name in VARIANTS:
    rs = [r for r in rows if r["variant"] == name]
    if not rs:
      continue
    lines.append(
        f"| `{name}` | {VARIANTS[name][0]} | {_fmt([r['test_accuracy'] for r in rs], 100)} | "
        f"{_fmt([r['firing_rate'] for r in rs], 1, 3)} | "
        f"{_fmt([r['energy_mj'] for r in rs], 1000, 3)} | "
        f"{_fmt([r['train_time_s'] for r in rs], 1, 1)} |")
  lines += ["", "## Firing rate per layer and time step (eval, mean over seeds)", "",
            "Stable per-step rates are DS-ATGO's claim; compare with the LIF baseline and the "
            "full method. Gradient-available share: train mode, the interval the backward uses "
            "(rectangular: inside the window; smooth families: g >= 1 % of its peak, so the "
            "numbers are comparable only within a surrogate family).", "",
            "| variant | layer | rate t=1..T | gradient-available share t=1..T |", "|---|---|---|---|"]
  for name in ("lif_fixed", "full", "dsatgo"):
    rs = [r for r in rows if r["variant"] == name]
    if not rs:
      continue
    rate = np.mean([r["rate_LT"] for r in rs], 0)
    share = np.mean([r["grad_share_LT"] for r in rs], 0)
    for layer, r_T, g_T in zip(rs[0]["layers"], rate, share):
      lines.append(f"| `{name}` | {layer} | {' / '.join(f'{v:.3f}' for v in r_T)} | "
                   f"{' / '.join(f'{v:.3f}' for v in g_T)} |")
  path = os.path.join(out_dir, "ablation_mnist5k.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(out_dir, "ablation_mnist5k.json"), "w") as f:
    json.dump(rows, f, indent=2)
  return path


def output_dir(out: str, variants: list[str], seeds: list[int], epochs: int, tiny: bool,
               workdir_root: str) -> str:
  """Where the table goes: ``out`` when given; the committed results only for the full run."""
  if out:
    return out
  full = list(variants) == list(VARIANTS) and list(seeds) == [0, 1, 2] and epochs == 3
  if full and not tiny:
    return RESULTS_DIR
  scratch = os.path.join(workdir_root, "quick_look")
  print(f"quick look (not the full run): the table goes to {scratch}", flush=True)
  return scratch


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    print(f"unknown variant(s) {unknown}; valid choices: {', '.join(VARIANTS)}", file=sys.stderr)
    sys.exit(2)
  seeds = [int(s) for s in _SEEDS.value]
  out = output_dir(_OUT.value, _VARIANTS.value, seeds, _EPOCHS.value, _TINY.value,
                   _WORKDIR_ROOT.value)
  rows = []
  for name in _VARIANTS.value:
    for seed in seeds:
      workdir = os.path.join(_WORKDIR_ROOT.value, ("tiny" if _TINY.value else "") +
                             f"e{_EPOCHS.value}", name, f"seed{seed}")
      row = run_one(name, seed, _EPOCHS.value, workdir, _TINY.value)
      print(f"{name:12s} seed {seed}: acc {row['test_accuracy']:.4f} rate "
            f"{row['firing_rate']:.3f} time {row['train_time_s']:.1f}s", flush=True)
      rows.append(row)
  print(open(write_table(rows, out, _EPOCHS.value, seeds)).read())


if __name__ == "__main__":
  app.run(main)
