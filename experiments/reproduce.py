"""The papers' published results, one command each: list, run, check.

Usage::

  python -m experiments.reproduce                                   # every row, covered or not
  python -m experiments.reproduce --row=dsatgo_cifar10 --data_dir=/data/cifar10 \\
      --seeds=0,1,2 --workdir_root=/runs                            # train the row's runs
  python -m experiments.reproduce --check=/runs/dsatgo_cifar10/seed_0,/runs/dsatgo_cifar10/seed_1
  python -m experiments.reproduce --tiny --workdir_root=/tmp/repro  # every row's :tiny form

A row is a published number (paper, table, metric, value ± std) and the shipped config that
reproduces its setting. ``--row`` runs ``python -m cfsnn_jax.main`` on the row's config for
each seed (workdir ``<workdir_root>/<row>/seed_<s>``; a finished workdir is not repeated).
``--check`` reads the ``summary.json`` of finished workdirs (one per seed), takes the mean ±
std (population std over seeds; none for one seed) of the row's metric, prints it beside the
paper's and appends one line to ``docs/RESULTS.md`` (``--results_file``) with the host, seeds,
commit and date of the runs. The row comes from ``--row`` or from the workdirs' config
(dataset, model, neuron). ``--tiny`` trains every row's config on its ``:tiny`` branch
(fixture data, a few steps; rows sharing a config share the run) and checks each against its
row into ``<workdir_root>/RESULTS.md``: the whole path runs, the numbers mean nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags, logging

from cfsnn_jax.errors import UserError, unknown_choice

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_FILE = os.path.join(REPO, "docs", "RESULTS.md")
CFSNN = "CF-SNN (Zhou et al. 2026)"
DSATGO = "DS-ATGO (Jiang et al. 2025), table of results"


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  paper: str
  setting: str  # data set, network, T as the paper reports it
  metric: str  # summary.json field: test_accuracy (fraction) or energy_mj_per_image
  value: float  # as published: accuracy in %, energy in mJ per image
  std: float | None = None
  config: str | None = None  # shipped config; None: not covered
  note: str = ""

  @property
  def published(self) -> str:
    unit = " %" if self.metric == "test_accuracy" else " mJ"
    return f"{self.value:g}" + (f" ± {self.std:g}" if self.std is not None else "") + unit


ROWS: tuple[Row, ...] = (
    Row("cfsnn_cifar10_dvs", CFSNN, "CIFAR10-DVS, VGGSNN, T = 10", "test_accuracy", 87.0,
        config="cifar10_dvs", note="our 90/10 split (docs/DATA.md); papers' splits differ"),
    Row("cfsnn_dvs_gesture", CFSNN, "DVS128 Gesture, VGGSNN, T = 16", "test_accuracy", 98.33,
        config="dvs_gesture"),
    Row("cfsnn_tiny_imagenet", CFSNN, "ImageNet-200 (Tiny-ImageNet), ResNet-18, T = 4",
        "test_accuracy", 62.14, config="tiny_imagenet"),
    Row("cfsnn_sst2", CFSNN, "SST-2, spiking Transformer, T = 4", "test_accuracy", 81.31,
        config="sst2"),
    Row("cfsnn_sst5", CFSNN, "SST-5, spiking Transformer, T = 4", "test_accuracy", 41.9,
        config="sst5"),
    Row("cfsnn_evtouch", CFSNN, "EvTouch-Objects, MLP, T = 20", "test_accuracy", 90.28,
        config="evtouch"),
    Row("cfsnn_energy_cifar10", CFSNN, "energy per image, CIFAR-10, ResNet-19, T = 4",
        "energy_mj_per_image", 0.117, config="cifar10",
        note="METHOD.md §7 estimate (analysis report)"),
    Row("cfsnn_energy_cifar100", CFSNN, "energy per image, CIFAR-100, ResNet-19, T = 4",
        "energy_mj_per_image", 0.117, config="cifar100",
        note="METHOD.md §7 estimate (analysis report)"),
    Row("dsatgo_cifar10", DSATGO, "CIFAR-10, ResNet-19, T = 2", "test_accuracy", 96.91, 0.12,
        config="dsatgo_cifar10"),
    Row("dsatgo_cifar100", DSATGO, "CIFAR-100, ResNet-19, T = 2", "test_accuracy", 80.59,
        0.17, config="dsatgo_cifar100"),
    Row("dsatgo_cifar10_dvs", DSATGO, "CIFAR10-DVS, VGGSNN, T = 10", "test_accuracy", 83.70,
        0.41, config="dsatgo_cifar10_dvs", note="our split (docs/DATA.md)"),
    Row("dsatgo_imagenet1k", DSATGO, "ImageNet-1k, ResNet-18, T = 4", "test_accuracy", 68.86,
        0.25, config=None, note="not covered: no ImageNet-1k loader or config"),
)
BY_NAME = {r.name: r for r in ROWS}

def define_flags() -> dict:
  """The command's flags (defined when run as a program, so importing this module defines
  none: ``experiments.launch`` has flags of the same names)."""
  _ROW = flags.DEFINE_string("row", None, "Run (or, with --check, compare with) this row.")
  _DATA_DIR = flags.DEFINE_string("data_dir", None, "The row's data directory (--row).")
  _SEEDS = flags.DEFINE_string("seeds", "0", "Comma list of seeds (--row): one run each.")
  _ROOT = flags.DEFINE_string("workdir_root", "workdirs/reproduce",
                              "Parent of <row>/seed_<s> workdirs (--row, --tiny).")
  _CHECK = flags.DEFINE_string("check", None, "Comma list of finished workdirs (one per seed) "
                               "to compare with their row.")
  _RESULTS = flags.DEFINE_string("results_file", RESULTS_FILE, "Where --check appends.")
  _TINY = flags.DEFINE_bool("tiny", False, "Train every row's config on its :tiny branch and "
                            "check it (a smoke test of the whole path).")
  _DRY_RUN = flags.DEFINE_bool("dry_run", False, "--row: print the commands, run nothing.")
  return dict(row=_ROW, data_dir=_DATA_DIR, seeds=_SEEDS, root=_ROOT, check=_CHECK,
              results=_RESULTS, tiny=_TINY, dry_run=_DRY_RUN)


def table() -> str:
  lines = ["| row | paper | setting | published | config | note |", "|---|---|---|---|---|---|"]
  for r in ROWS:
    lines.append(f"| {r.name} | {r.paper} | {r.setting} | {r.published} | "
                 f"{r.config or 'not covered'} | {r.note} |")
  return "\n".join(lines)


def row_command(row: Row, data_dir: str, seed: int, workdir: str) -> list[str]:
  from benchmarks import programs
  return [sys.executable, "-m", "cfsnn_jax.main", f"--config={programs.config_path(row.config)}",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", f"--config.seed={seed}"]


def _row(name: str) -> Row:
  if name not in BY_NAME:
    raise unknown_choice("row", name, BY_NAME)
  row = BY_NAME[name]
  if row.config is None:
    raise UserError(f"row {name!r} is not covered by a config: {row.note}")
  return row


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path}: not found (is the run finished?)") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None


def infer_row(config: dict) -> Row:
  """The row whose config trains what ``config`` (a workdir's ``config.json``) trains."""
  from benchmarks import programs
  key = infer_key(config)
  found = [r for r in ROWS if r.config and
           infer_key(json.loads(programs.load_config(r.config).to_json())) == key]
  if len(found) != 1:
    names = ", ".join(r.name for r in found) or "none"
    raise UserError(f"cannot tell the row from the workdir's config ({key} matches "
                    f"{names}): pass --row")
  return found[0]


def _git_commit() -> str:
  try:
    return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def check(workdirs: list[str], row: Row | None, results_file: str) -> dict:
  """Mean ± std of the row's metric over ``workdirs``; one line appended to ``results_file``."""
  summaries, configs, runs = [], [], []
  for w in workdirs:
    summaries.append(_read_json(os.path.join(w, "summary.json")))
    configs.append(_read_json(os.path.join(w, "config.json")))
    runs.append(_read_json(os.path.join(w, "run.json")) if os.path.exists(
        os.path.join(w, "run.json")) else {})
  row = row or infer_row(configs[0])
  for w, c in zip(workdirs, configs):
    if infer_key(c) != infer_key(configs[0]):
      raise UserError(f"{w}: trains another setting than {workdirs[0]}")
  values = []
  for w, s in zip(workdirs, summaries):
    if row.metric not in s:
      raise UserError(f"{w}/summary.json has no {row.metric!r} (keys: {', '.join(s)})")
    values.append(float(s[row.metric]) * (100.0 if row.metric == "test_accuracy" else 1.0))
  mean = statistics.fmean(values)
  std = statistics.pstdev(values) if len(values) > 1 else None
  seeds = [c.get("seed") for c in configs]
  starts = [r.get("starts", [{}])[0] for r in runs]
  hosts = sorted({s.get("host", "?") for s in starts})
  date = min((s.get("time", "") for s in starts), default="") or datetime.date.today().isoformat()
  ours = f"{mean:.4g}" + (f" ± {std:.2g}" if std is not None else "")
  out = {"row": row.name, "values": values, "mean": mean, "std": std, "seeds": seeds,
         "published": row.value, "published_std": row.std, "difference": mean - row.value,
         "hosts": hosts, "commit": _git_commit(), "date": date[:10]}
  line = (f"| {row.name} | {row.setting} | {row.published} | {ours} | {mean - row.value:+.3g} "
          f"| {', '.join(map(str, seeds))} | {', '.join(hosts)} | {out['commit']} | "
          f"{out['date']} |")
  os.makedirs(os.path.dirname(os.path.abspath(results_file)), exist_ok=True)
  new = not os.path.exists(results_file)
  with open(results_file, "a") as f:
    if new:
      f.write("# Reproduced results\n\n| row | setting | published | ours (mean ± std) | "
              "difference | seeds | host | commit | date |\n|---|---|---|---|---|---|---|---|"
              "---|\n")
    f.write(line + "\n")
  print(f"{row.name}: ours {ours} vs published {row.published} ({len(values)} run(s)); "
        f"appended to {results_file}", flush=True)
  return out


def infer_key(config: dict) -> tuple:
  return (config["dataset"], config["model"]["name"], config["neuron"]["name"],
          config["num_steps"])


def run_row(row: Row, data_dir: str, seeds: list[int], root: str, dry_run: bool) -> list[str]:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  workdirs = []
  for seed in seeds:
    workdir = os.path.join(root, row.name, f"seed_{seed}")
    cmd = row_command(row, data_dir, seed, workdir)
    shown = "python " + " ".join(cmd[1:])
    print(shown if dry_run else f"running: {shown}", flush=True)
    if not dry_run:
      r = subprocess.run(cmd, env=env, cwd=REPO, check=False)
      if r.returncode != 0:
        raise SystemExit(f"{row.name} seed {seed}: exit code {r.returncode}")
    workdirs.append(workdir)
  if not dry_run:
    print(f"check with: python -m experiments.reproduce --row={row.name} "
          f"--check={','.join(workdirs)}", flush=True)
  return workdirs


def run_tiny(root: str) -> list[dict]:
  """Every row's config on its ``:tiny`` branch (one run per config), in this process, then
  ``check`` of each row against its run into ``<root>/RESULTS.md``."""
  from cfsnn_jax import run
  from benchmarks import programs
  workdirs = {}
  for row in ROWS:
    if row.config is None or row.config in workdirs:
      continue
    workdirs[row.config] = os.path.join(root, f"{row.config}_tiny")
    run.run(programs.load_config(f"{row.config}:tiny"), workdirs[row.config])
  return [check([workdirs[r.config]], r, os.path.join(root, "RESULTS.md"))
          for r in ROWS if r.config is not None]


FLAGS: dict = {}


def main(argv):
  del argv
  _ROW, _DATA_DIR, _SEEDS, _ROOT, _CHECK, _RESULTS, _TINY, _DRY_RUN = (FLAGS[k] for k in (
      "row", "data_dir", "seeds", "root", "check", "results", "tiny", "dry_run"))
  logging.set_verbosity(logging.WARNING)  # orbax / absl INFO chatter off, as cfsnn_jax.main
  try:
    if _CHECK.value:
      check([w for w in _CHECK.value.split(",") if w], _row(_ROW.value) if _ROW.value else None,
            _RESULTS.value)
    elif _TINY.value:
      run_tiny(_ROOT.value)
    elif _ROW.value:
      row = _row(_ROW.value)
      if not _DATA_DIR.value:
        raise UserError("--row needs --data_dir (the data set's directory, docs/DATA.md)")
      try:
        seeds = [int(s) for s in _SEEDS.value.split(",") if s.strip()]
      except ValueError:
        raise UserError(f"--seeds={_SEEDS.value!r}: expected a comma list of integers") from None
      run_row(row, _DATA_DIR.value, seeds, _ROOT.value, _DRY_RUN.value)
    else:
      print(table())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  FLAGS.update(define_flags())
  app.run(main)
