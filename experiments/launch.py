"""Turns a sweep (``experiments/sweeps.py``) into commands and runs them (``--dry_run`` prints).

Usage::

  python -m experiments.launch --sweep=cifar100_T --dry_run
  python -m experiments.launch --sweep=cifar100_T --workdir_root=/data/runs \\
      --set=config.data_dir=/data/cifar --parallel=2                               # locally
  python -m experiments.launch --sweep=cifar100_T --tpu=my-pod --zone=us-central2-b \\
      --workdir_root=gs://bucket/runs --set=config.data_dir=/data/cifar --dry_run  # TPU pod
  python -m experiments.launch --sweep=cifar100_T --tiny --workdir_root=/tmp/sweep  # smoke

Each point's workdir is ``<workdir_root>/<sweep>/<point name>`` (the point name is made of its
overrides, ``num_steps=2_seed=0``). ``--set`` (repeatable, ``config.FIELD=VALUE`` or
``FIELD=VALUE``) adds overrides to every point, such as the data directory; it may not set a
field the sweep itself varies. ``--tiny`` runs every point on the config's ``:tiny`` branch.
Every point's flags are parsed and validated exactly as ``cfsnn_jax.main`` does
(``command_line.parse_and_validate``) before anything runs, so a stale sweep fails at once, naming the
bad field. Locally ``--parallel=N`` runs N points at a time, each logging to
``<workdir>.log``; with N = 1 the points run one after another in this terminal. On a TPU pod
each point is one ``gcloud compute tpus tpu-vm ssh --worker=all`` line: every worker runs the
same command and ``jax.distributed.initialize()`` (``--distributed``) finds the others; the
points run one after another (each uses the whole pod).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

from cfsnn_jax.errors import UserError
from experiments import sweeps

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep name (experiments/sweeps.py).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.")
_ROOT = flags.DEFINE_string("workdir_root", "workdirs", "Parent of <sweep>/<point> workdirs.")
_SET = flags.DEFINE_multi_string("set", [], "config.FIELD=VALUE added to every point "
                                 "(repeatable), e.g. --set=config.data_dir=/data/cifar.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Local points run at a time (>= 1).")
_TINY = flags.DEFINE_bool("tiny", False, "Run every point on the config's :tiny branch.")
_TPU = flags.DEFINE_string("tpu", None, "TPU VM name: emit one gcloud ssh --worker=all line "
                           "per point.")
_ZONE = flags.DEFINE_string("zone", None, "TPU zone (with --tpu).")
_REPO_DIR = flags.DEFINE_string("repo_dir", "cfsnn_jax", "Checkout path on the TPU workers.")


def point_name(overrides: dict) -> str:
  return "_".join(f"{k.replace('.', '-')}={v}" for k, v in overrides.items()) or "base"


def _fmt(v) -> str:
  return str(v) if not isinstance(v, (tuple, list)) else "(" + ",".join(map(str, v)) + ",)"


def override_args(overrides: dict) -> list[str]:
  return [f"--config.{k}={_fmt(v)}" for k, v in overrides.items()]


def parse_sets(sets: list[str]) -> dict:
  """``["config.data_dir=/d", "seed=3"]`` -> ``{"data_dir": "/d", "seed": "3"}``."""
  out = {}
  for item in sets:
    key, sep, value = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep or not key:
      raise UserError(f"--set={item!r}: expected config.FIELD=VALUE")
    out[key] = value
  return out


def check_point(config_path: str, args: list[str], overrides: dict) -> None:
  """Parses and validates the point's flags as ``cfsnn_jax.main`` does (data paths apart:
  they may exist only where the point runs)."""
  from cfsnn_jax.config import command_line as cli
  try:
    cli.parse_and_validate(["launch", f"--config={config_path}", *args], check_paths=False)
  except UserError as e:
    raise UserError(f"sweep point {overrides} does not fit {config_path}: {e}") from None


def point_runs(name: str, workdir_root: str, extra: dict | None = None,
               tiny: bool = False) -> list[tuple[str, list[str]]]:
  """``(workdir, argv)`` per point of sweep ``name``, each checked."""
  sweep = sweeps.get_sweep(name)
  extra = dict(extra or {})
  config = sweep["config"] + (":tiny" if tiny else "")
  out = []
  for overrides in sweep["points"]:
    clash = sorted(set(extra) & set(overrides))
    if clash:
      raise UserError(f"--set {', '.join(clash)}: the sweep {name!r} varies this field itself")
    args = override_args(overrides) + [f"--config.{k}={v}" for k, v in extra.items()]
    check_point(config, args, overrides)
    workdir = f"{workdir_root.rstrip('/')}/{name}/{point_name(overrides)}"
    out.append((workdir, ["python", "-m", "cfsnn_jax.main", f"--config={config}",
                          f"--workdir={workdir}", *args]))
  return out


def commands(name: str, workdir_root: str, tpu: str | None = None, zone: str | None = None,
             repo_dir: str = "cfsnn_jax", extra: dict | None = None,
             tiny: bool = False) -> list[str]:
  out = []
  for _, args in point_runs(name, workdir_root, extra, tiny):
    if tpu:
      remote = f"cd {repo_dir} && " + " ".join(map(shlex.quote, args + ["--distributed"]))
      gcloud = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, "--worker=all",
                f"--command={remote}"]
      if zone:
        gcloud.insert(6, f"--zone={zone}")
      out.append(" ".join(map(shlex.quote, gcloud)))
    else:
      out.append(" ".join(map(shlex.quote, args)))
  return out


def run_local(runs: list[tuple[str, list[str]]], parallel: int) -> int:
  """Runs the points, ``parallel`` at a time; returns the number that failed."""
  if parallel <= 1:
    failed = 0
    for _, args in runs:
      print(" ".join(map(shlex.quote, args)), flush=True)
      failed += subprocess.run([sys.executable, *args[1:]]).returncode != 0
    return failed
  pending, running, failed = list(runs), [], 0
  while pending or running:
    while pending and len(running) < parallel:
      workdir, args = pending.pop(0)
      os.makedirs(os.path.dirname(workdir) or ".", exist_ok=True)
      log = open(workdir + ".log", "w")
      print(f"start {' '.join(map(shlex.quote, args))}  (log: {workdir}.log)", flush=True)
      running.append((workdir, log, subprocess.Popen([sys.executable, *args[1:]], stdout=log,
                                                     stderr=subprocess.STDOUT)))
    for item in list(running):
      workdir, log, proc = item
      if proc.poll() is not None:
        log.close()
        running.remove(item)
        failed += proc.returncode != 0
        print(f"{'done' if proc.returncode == 0 else f'FAILED ({proc.returncode})'} "
              f"{workdir}", flush=True)
    time.sleep(0.2)
  return failed


def main(argv):
  del argv
  try:
    if not _SWEEP.value:
      raise UserError(f"--sweep is required; valid choices: {', '.join(sorted(sweeps.SWEEPS))}")
    if _PARALLEL.value < 1:
      raise UserError(f"--parallel={_PARALLEL.value}: expected an integer >= 1")
    extra = parse_sets(_SET.value)
    if _TPU.value:
      cmds = commands(_SWEEP.value, _ROOT.value, _TPU.value, _ZONE.value, _REPO_DIR.value,
                      extra, _TINY.value)
    else:
      runs = point_runs(_SWEEP.value, _ROOT.value, extra, _TINY.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if _TPU.value:
    for cmd in cmds:
      print(cmd, flush=True)
      if not _DRY_RUN.value:
        subprocess.run(cmd, shell=True, check=True)
    return
  if _DRY_RUN.value:
    for _, args in runs:
      print(" ".join(map(shlex.quote, args)), flush=True)
    return
  failed = run_local(runs, _PARALLEL.value)
  if failed:
    print(f"error: {failed} of {len(runs)} points failed", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
