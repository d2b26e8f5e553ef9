"""Sweeps as data and the launcher: one correct command per point, checked against the locked
config; TPU-pod lines; a stale sweep point is rejected by name."""

import os
import shlex
import subprocess
import sys

import pytest

from experiments import launch, sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", sorted(sweeps.SWEEPS))
def test_every_sweep_point_becomes_one_accepted_command(name):
  sweep = sweeps.get_sweep(name)
  cmds = launch.commands(name, "/runs")
  assert len(cmds) == len(sweep["points"]) > 0
  assert len(set(cmds)) == len(cmds)
  for cmd, point in zip(cmds, sweep["points"]):
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "cfsnn_jax.main"]
    assert f"--config={sweep['config']}" in argv
    assert any(a.startswith(f"--workdir=/runs/{name}/") for a in argv)
    for key, value in point.items():
      assert f"--config.{key}={value}" in argv


def test_cifar100_T_sweep_covers_T_and_seeds():
  points = sweeps.get_sweep("cifar100_T")["points"]
  assert sorted({p["num_steps"] for p in points}) == [2, 4, 6]
  assert len(points) == 9


def test_tpu_pod_lines():
  cmds = launch.commands("cifar10_T", "gs://bucket/runs", tpu="pod", zone="us-central2-b")
  argv = shlex.split(cmds[0])
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--zone=us-central2-b" in argv and "--worker=all" in argv
  remote = [a for a in argv if a.startswith("--command=")][0]
  assert "--distributed" in remote and "--workdir=gs://bucket/runs/cifar10_T/" in remote


def test_stale_point_rejected(monkeypatch):
  bad = {"config": "configs/cifar100.py", "description": "",
         "points": [{"neuron.levles": 2}]}
  monkeypatch.setitem(sweeps.SWEEPS, "bad", bad)
  with pytest.raises(ValueError, match="does not fit configs/cifar100.py"):
    launch.commands("bad", "/runs")


def test_dry_run_cli_prints_commands_and_runs_nothing(tmp_path):
  r = subprocess.run([sys.executable, "-m", "experiments.launch", "--sweep=cifar10_dvs",
                      "--dry_run", f"--workdir_root={tmp_path}"], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stdout.splitlines() if l.strip()]
  assert len(lines) == 3 and all("cfsnn_jax.main" in l for l in lines)
  assert not os.listdir(tmp_path)  # nothing ran
