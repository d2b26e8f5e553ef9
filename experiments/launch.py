"""Turns a sweep (``experiments/sweeps.py``) into commands and runs them (``--dry_run`` prints).

Usage::

  python -m experiments.launch --sweep=cifar100_T --dry_run
  python -m experiments.launch --sweep=cifar100_T --workdir_root=/data/runs          # locally
  python -m experiments.launch --sweep=cifar100_T --tpu=my-pod --zone=us-central2-b \\
      --workdir_root=gs://bucket/runs --dry_run                                      # TPU pod

Every point's overrides are checked against the locked config with the real flag parser
before anything runs, so a stale sweep fails at once, naming the bad field. On a TPU pod each
point is one ``gcloud compute tpus tpu-vm ssh --worker=all`` line: every worker runs the same
command and ``jax.distributed.initialize()`` (``--distributed``) finds the others.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import sweeps

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep name (experiments/sweeps.py).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.")
_ROOT = flags.DEFINE_string("workdir_root", "workdirs", "Parent of each point's workdir.")
_TPU = flags.DEFINE_string("tpu", None, "TPU VM name: emit one gcloud ssh --worker=all line "
                           "per point.")
_ZONE = flags.DEFINE_string("zone", None, "TPU zone (with --tpu).")
_REPO_DIR = flags.DEFINE_string("repo_dir", "cfsnn_jax", "Checkout path on the TPU workers.")


def point_name(overrides: dict) -> str:
  return "_".join(f"{k.replace('.', '-')}={v}" for k, v in overrides.items()) or "base"


def override_args(overrides: dict) -> list[str]:
  def fmt(v):
    return str(v) if not isinstance(v, (tuple, list)) else "(" + ",".join(map(str, v)) + ",)"
  return [f"--config.{k}={fmt(v)}" for k, v in overrides.items()]


def check_point(config_path: str, overrides: dict) -> None:
  """Parses the point's flags against the locked config exactly as ``cfsnn_jax.main`` does."""
  argv = ["launch", f"--config={config_path}", *override_args(overrides)]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  try:
    fv(argv)
    _ = fv.config
  except Exception as e:  # absl wraps the config error; keep its first line
    first = str(e).strip().splitlines()[0]
    raise ValueError(f"sweep point {overrides} does not fit {config_path}: {first}") from None


def commands(name: str, workdir_root: str, tpu: str | None = None, zone: str | None = None,
             repo_dir: str = "cfsnn_jax") -> list[str]:
  sweep = sweeps.get_sweep(name)
  out = []
  for overrides in sweep["points"]:
    check_point(sweep["config"], overrides)
    workdir = f"{workdir_root.rstrip('/')}/{name}/{point_name(overrides)}"
    args = ["python", "-m", "cfsnn_jax.main", f"--config={sweep['config']}",
            f"--workdir={workdir}", *override_args(overrides)]
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


def main(argv):
  del argv
  if not _SWEEP.value:
    print(f"--sweep is required; valid choices: {', '.join(sorted(sweeps.SWEEPS))}",
          file=sys.stderr)
    sys.exit(2)
  try:
    cmds = commands(_SWEEP.value, _ROOT.value, _TPU.value, _ZONE.value, _REPO_DIR.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for cmd in cmds:
    print(cmd, flush=True)
    if not _DRY_RUN.value:
      subprocess.run(cmd, shell=True, check=True)


if __name__ == "__main__":
  app.run(main)
