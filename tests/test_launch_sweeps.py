"""The launcher: overrides for every point (``--set``), workdirs from sweep + point names,
``--parallel`` local points, ``--tiny`` points that validate, one error line for bad input."""

import os
import shlex
import subprocess
import sys

import pytest

from cfsnn_jax.errors import UserError
from experiments import launch, sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_set_reaches_every_point_and_workdirs_follow_the_names():
  cmds = launch.commands("cifar100_T", "/runs", extra=launch.parse_sets(
      ["config.data_dir=/data/cifar", "optimizer.learning_rate=0.05"]))
  points = sweeps.get_sweep("cifar100_T")["points"]
  assert len(cmds) == len(points)
  for cmd, point in zip(cmds, points):
    argv = shlex.split(cmd)
    assert "--config.data_dir=/data/cifar" in argv
    assert "--config.optimizer.learning_rate=0.05" in argv
    assert f"--workdir=/runs/cifar100_T/{launch.point_name(point)}" in argv


def test_tpu_lines_carry_the_set_overrides():
  cmds = launch.commands("cifar10_T", "gs://b/runs", tpu="pod",
                         extra={"data_dir": "/data/cifar"})
  remote = [a for a in shlex.split(cmds[0]) if a.startswith("--command=")][0]
  assert "--config.data_dir=/data/cifar" in remote and "--distributed" in remote


@pytest.mark.parametrize("sets,match", [
    (["config.seed=3"], "varies this field itself"),
    (["config.dat_dir=/d"], "did you mean 'data_dir'"),
    (["config.num_steps"], "expected config.FIELD=VALUE"),
    (["config.optimizer.learning_rate=-1"], "learning_rate=-1.0: expected float > 0"),
])
def test_bad_set_is_one_line(sets, match):
  with pytest.raises(UserError, match=match):
    launch.commands("dvs_gesture", "/runs", extra=launch.parse_sets(sets))


def test_tiny_points_validate_for_every_sweep():
  for name in sweeps.SWEEPS:
    runs = launch.point_runs(name, "/tmp/x", tiny=True)
    assert all(":tiny" in args[3] for _, args in runs)


def test_parallel_runs_every_point_and_counts_failures(tmp_path):
  script = "import sys, time; time.sleep(0.3); open(sys.argv[1], 'w'); sys.exit(int(sys.argv[2]))"
  runs = [(str(tmp_path / f"p{i}"), ["python", "-c", script, str(tmp_path / f"done{i}"),
                                     str(int(i == 2))]) for i in range(4)]
  failed = launch.run_local(runs, parallel=3)
  assert failed == 1
  assert sorted(os.listdir(tmp_path)) == sorted([f"done{i}" for i in range(4)] +
                                                [f"p{i}.log" for i in range(4)])


def test_cli_errors_are_one_line(tmp_path):
  r = subprocess.run([sys.executable, "-m", "experiments.launch", "--sweep=cifar10_dvs",
                      "--dry_run", "--parallel=0"], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2 and r.stderr.strip() == "error: --parallel=0: expected an integer >= 1"
