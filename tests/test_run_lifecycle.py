"""A run you can trust, through ``python -m cfsnn_jax.main`` (README "Runs and workdirs").

One uninterrupted reference run, then one workdir taken through kill -9 (twice), a garbage
metrics line, a concurrent second run (refused by the lock), SIGTERM mid-epoch (checkpoint at
that step) and a truncated latest checkpoint (fallback to the older step): its records, its
summary and its final parameters must equal the reference's. Plus: a finished workdir rerun
writes nothing, a mismatched config is refused before any write, divergence keeps the last
good checkpoint, and bad workdirs are one line.
"""

import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 200
ARGS = (f"--config={REPO}/configs/default.py:tiny", f"--config.num_train_steps={STEPS}",
        "--config.checkpoint_every_steps=10", "--config.eval_every_steps=50",
        "--config.analysis_report=False")
TIMING = {"train_time_s", "images_per_s"}


def _start(workdir, *extra, cwd=REPO):
  flag = [] if workdir is None else [f"--workdir={workdir}"]
  cmd = [sys.executable, "-m", "cfsnn_jax.main", *flag, *ARGS, *extra]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (
      REPO, os.environ.get("PYTHONPATH")))))
  return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)


def _run(workdir, *extra, rc=0, cwd=REPO):
  proc = _start(workdir, *extra, cwd=cwd)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == rc, (proc.returncode, err[-3000:])
  return out, err


def _wait_for(proc, predicate, what):
  deadline = time.time() + 200
  while not predicate():
    assert proc.poll() is None, f"run ended before {what}: {proc.communicate()[1][-2000:]}"
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.005)


def _max_train_step(workdir):
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      steps = [json.loads(l)["step"] for l in f if l.endswith("}\n") and '"train"' in l]
  except (OSError, ValueError):
    return 0
  return max(steps, default=0)


def _saving(workdir, after):
  """True while orbax writes a step >= ``after`` (its temporary directory exists)."""
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  return any(".orbax-checkpoint-tmp" in n and int(n.split(".")[0]) >= after for n in names)


def _hashes(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return {k: v for k, v in json.load(f).items() if k not in TIMING}


def _params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))["params"]


def _one_error_line(err):
  lines = [l for l in err.splitlines() if l.strip() and not l.startswith("WARNING")]
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
  return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  _run(workdir, "--config.log_every_steps=1")
  return workdir


def test_finished_rerun_and_mismatched_config_write_nothing(reference):
  before = _hashes(reference)
  out, _ = _run(reference)  # run-only fields (log_every_steps) may differ
  assert "holds a finished run" in out and "final: test_accuracy=" in out
  _, err = _run(reference, "--config.neuron.name=lif", rc=2)
  line = _one_error_line(err)
  assert f"holds another run: neuron.name is \"cf\" in its checkpoint step {STEPS}, \"lif\" " \
      "here" in line  # the run stored with the checkpoint decides
  assert "new --workdir" in line
  assert _hashes(reference) == before


def test_interruptions_resume_exactly(reference, tmp_path):
  workdir = str(tmp_path / "run")
  extra = ("--config.log_every_steps=1",)
  # 1. kill -9 between checkpoints
  proc = _start(workdir, *extra)
  _wait_for(proc, lambda: _max_train_step(workdir) >= 15, "step 15")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # 2. a garbage line (e.g. after a full disk) in the records: reported with file:line
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = f.readlines()
  lines.insert(1, "\x00\x00{garbage\n")
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(lines)
  # 3. resume; a second run on the same workdir is refused while this one lives; then SIGTERM
  proc = _start(workdir, *extra)
  _wait_for(proc, lambda: _max_train_step(workdir) >= 60, "step 60")
  proc.send_signal(signal.SIGSTOP)
  _, err = _run(workdir, *extra, rc=2)
  assert f"is in use by pid {proc.pid} on host" in _one_error_line(err)
  proc.send_signal(signal.SIGTERM)
  proc.send_signal(signal.SIGCONT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert "metrics.jsonl:2: not a metrics record, skipped" in err
  resumed = re.search(r"resuming at step (\d+)", out)  # none if killed before saving 10
  assert int(resumed.group(1) if resumed else 0) in (0, 10, 20, 30, 40, 50), out
  stop = re.search(r"interrupted: SIGTERM at step (\d+): checkpoint saved", err)
  assert stop, err[-2000:]
  stop = int(stop.group(1))
  assert 60 <= stop < STEPS and os.path.isdir(os.path.join(workdir, "checkpoints", str(stop)))
  # 4. truncate the latest checkpoint's data: the next run falls back to the older step
  data = max(glob.glob(os.path.join(workdir, "checkpoints", str(stop), "state", "**", "d", "*"),
                       recursive=True), key=os.path.getsize)
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  older = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
              if d.isdigit() and int(d) < stop)
  proc = _start(workdir, *extra)
  _wait_for(proc, lambda: _saving(workdir, 120) or _max_train_step(workdir) >= 150, "step 120")
  proc.send_signal(signal.SIGKILL)  # 5. kill -9 again, mid-save if we catch one
  out, err = proc.communicate()
  assert f"checkpoint step {stop} in" in err and "does not restore" in err, err[-2000:]
  assert f"resuming at step {older}" in out
  # 6. finish, saving on a timer too (all steps kept); everything equals the uninterrupted run
  out, _ = _run(workdir, *extra, "--config.checkpoint_every_seconds=0.01",
                "--config.keep_checkpoints=1000")
  saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert any(step % 10 for step in saved if step > 120), saved  # time-based saves
  assert _rows(workdir) == _rows(reference)
  keys = [(r["step"], r["split"]) for r in _rows(workdir)]
  assert len(keys) == len(set(keys)) and (STEPS, "train") in keys
  assert _summary(workdir) == _summary(reference)
  for a, b in zip(jax.tree.leaves(_params(workdir, STEPS)),
                  jax.tree.leaves(_params(reference, STEPS))):
    np.testing.assert_array_equal(a, b)
  assert not os.path.exists(os.path.join(workdir, "run.lock"))


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
  # no --workdir: a fresh workdirs/<config>-<variant>-<time>-<pid>, printed at start
  out, err = _run(None, "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=1e6",
                  "--config.checkpoint_every_steps=1", "--config.num_train_steps=30", rc=2,
                  cwd=str(tmp_path))
  made = re.search(r"cfsnn_jax: workdir (workdirs/default-tiny-\d{8}-\d{6}-\d+) \(no "
                   r"--workdir given\)", out)
  assert made, out
  workdir = str(tmp_path / made.group(1))
  assert os.listdir(tmp_path / "workdirs") == [os.path.basename(workdir)]
  line = _one_error_line(err)
  match = re.match(r"error: training diverged at step (\d+): (loss|grad_norm|params/\S+)", line)
  assert match, line
  step = int(match.group(1))
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps and steps[-1] == step - 1, (steps, line)
  for leaf in jax.tree.leaves(_params(workdir, steps[-1])):
    assert np.isfinite(leaf).all()
  assert not os.path.exists(os.path.join(workdir, "summary.json"))


@pytest.mark.parametrize("kind", ["file", "read_only", "empty"])
def test_bad_workdir_is_one_line(kind, tmp_path):
  if kind == "file":
    workdir = str(tmp_path / "a_file")
    open(workdir, "w").close()
    expected = "is a file, not a directory"
  elif kind == "read_only":
    workdir = "/sys/cfsnn_jax_test_workdir"  # sysfs refuses mkdir even for root
    expected = "/sys/cfsnn_jax_test_workdir is not writable"
  else:
    workdir, expected = "", "--workdir is empty"
  _, err = _run(workdir, rc=2)
  assert expected in _one_error_line(err)
