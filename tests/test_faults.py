"""Faults a real machine produces (issue 25; README "Runs and workdirs"), reproduced.

A damaged kernel cache entry (truncated, replaced, not rebuildable), another run's checkpoint
behind a deleted ``config.json`` / ``run.json``, a hand-edited ``config.json``, ownerless
and half-written locks, a disk that fills mid-run (a small tmpfs; skipped where it cannot be
mounted) and failed writes without a mount (``os.fsync`` / ``os.write`` raising ENOSPC), a
non-UTF-8 metrics line, Ctrl-C with data workers and SIGTERM during the end-of-run report.
Each must end in one line (or nothing), lose nothing and attribute nothing to the wrong run.
"""

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

from cfsnn_jax.training import metric_writers, workdir
from cfsnn_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
ARGS = (f"--config={REPO}/configs/default.py:tiny", f"--config.num_train_steps={STEPS}",
        "--config.checkpoint_every_steps=5", "--config.eval_every_steps=20",
        "--config.log_every_steps=1", "--config.analysis_report=False")
TIMING = {"train_time_s", "images_per_s"}


def _env(**extra):
  return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (
      REPO, os.environ.get("PYTHONPATH")))), **extra)


def _start(workdir_, *extra, args=ARGS, **popen):
  cmd = [sys.executable, "-m", "cfsnn_jax.main", f"--workdir={workdir_}", *args, *extra]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=_env(), **popen)


def _run(workdir_, *extra, rc=0, args=ARGS):
  proc = _start(workdir_, *extra, args=args)
  out, err = proc.communicate(timeout=400)
  assert proc.returncode == rc, (proc.returncode, err[-3000:])
  return out, err


def _wait_for(proc, predicate, what):
  deadline = time.time() + 300
  while not predicate():
    assert proc.poll() is None, f"run ended before {what}: {proc.communicate()[1][-2000:]}"
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.005)


def _messages(err):
  """stderr without absl / orbax log records (``W1207 ...``, ``WARNING:...``)."""
  return [l for l in err.splitlines() if l.strip() and not l.startswith("WARNING")
          and not (len(l) > 5 and l[0] in "IWE" and l[1:5].isdigit())]


def _one_error_line(err, starts="error: "):
  lines = _messages(err)
  assert len(lines) == 1 and lines[0].startswith(starts), err[-3000:]
  return lines[0]


def _tree(root):
  out = {}
  for base, _, files in os.walk(root):
    for name in files:
      path = os.path.join(base, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _rows(root):
  rows = metric_writers.read_metrics(root)
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _summary(root):
  with open(os.path.join(root, "summary.json")) as f:
    return {k: v for k, v in json.load(f).items() if k not in TIMING}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("reference") / "run")
  _run(root)
  return root


# 1. kernel cache -------------------------------------------------------------------------

_CONV = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np
  from jax import lax
  from cfsnn_jax.backends import onednn_conv
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4), np.float32))
  def grads(conv):
    loss = lambda x, w: (conv(x, w, (1, 1), "SAME",
                              dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2).sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  got, want = grads(onednn_conv.conv_general_dilated), grads(lax.conv_general_dilated)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * float(np.abs(b).max()))
  print("enabled", onednn_conv.status()["enabled"])
""")


def _conv_in_child(cache, cxx):
  env = _env(CFSNN_CACHE_DIR=str(cache), CFSNN_ONEDNN_CONV="1", CXX=str(cxx))
  return subprocess.run([sys.executable, "-c", _CONV], cwd=REPO, capture_output=True,
                        text=True, env=env, timeout=400)


def test_damaged_kernel_cache_entry_is_rebuilt_or_falls_back(tmp_path):
  from cfsnn_jax.backends import onednn_conv
  if not onednn_conv._build_possible():
    pytest.skip("no oneDNN headers / C++ compiler on this machine")
  cxx = tmp_path / "cxx"  # one compiler path (part of the cache key) that can be broken later
  real = onednn_conv._compiler()
  cxx.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
  cxx.chmod(0o755)
  cache = tmp_path / "cache"
  first = _conv_in_child(cache, cxx)
  assert first.returncode == 0 and "enabled True" in first.stdout, first.stderr[-2000:]
  (library,) = cache.glob("onednn_conv-*.so")
  intact = library.read_bytes()
  assert json.loads((cache / (library.name + ".json")).read_text())["size"] == len(intact)

  library.write_bytes(intact[:len(intact) // 2])  # a full disk / killed build: cut in half
  again = _conv_in_child(cache, cxx)
  assert again.returncode == 0 and "enabled True" in again.stdout, (again.returncode,
                                                                     again.stderr[-2000:])
  assert library.stat().st_size == len(intact)  # rebuilt, not trusted because it exists

  rng = np.random.default_rng(1)  # a foreign file of the same size
  library.write_bytes(rng.integers(0, 256, len(intact), dtype=np.uint8).tobytes())
  foreign = _conv_in_child(cache, cxx)
  assert foreign.returncode == 0 and "enabled True" in foreign.stdout, foreign.stderr[-2000:]
  assert library.read_bytes()[:4] == b"\x7fELF"

  library.write_bytes(intact[:len(intact) // 2])
  cxx.write_text("#!/bin/sh\necho 'cc1plus: out of disk' >&2\nexit 1\n")  # rebuild fails
  broken = _conv_in_child(cache, cxx)
  assert broken.returncode == 0 and "enabled False" in broken.stdout, broken.stderr[-2000:]
  warnings = [l for l in broken.stderr.splitlines() if "oneDNN convolution kernels" in l]
  assert len(warnings) == 1 and "is damaged" in warnings[0] and "out of disk" in warnings[0]
  assert "Traceback" not in broken.stderr
  assert not list(cache.glob("tmp*"))  # no half-built library left


# 2. run identity -------------------------------------------------------------------------

def _interrupted_copy(reference, tmp_path, *delete):
  """The reference workdir as an unfinished run (summary gone), minus ``delete``."""
  import shutil
  root = str(tmp_path / "run")
  shutil.copytree(reference, root)
  for name in ("summary.json", *delete):
    os.remove(os.path.join(root, name))
  return root


def test_another_runs_checkpoint_is_refused_whatever_files_are_deleted(reference, tmp_path):
  root = _interrupted_copy(reference, tmp_path, "config.json")
  for also in ((), ("run.json",)):
    for name in also:
      os.remove(os.path.join(root, name))
    before = _tree(root)
    _, err = _run(root, "--config.optimizer.learning_rate=0.01", rc=2)
    line = _one_error_line(err)
    assert f"holds another run: optimizer.learning_rate is 0.003 in its checkpoint step " \
           f"{STEPS}, 0.01 here" in line and "pass a new --workdir" in line, line
    assert _tree(root) == before  # refused before anything is written
  _run(root)  # the run's own command continues it and rewrites what was deleted
  assert _summary(root) == _summary(reference) and _rows(root) == _rows(reference)
  with open(os.path.join(root, "config.json")) as f, \
       open(os.path.join(reference, "config.json")) as g:
    assert json.load(f) == json.load(g)


def test_config_json_edited_to_disagree_with_run_json_is_one_line(reference, tmp_path):
  root = _interrupted_copy(reference, tmp_path)
  path = os.path.join(root, "config.json")
  with open(path) as f:
    config = json.load(f)
  config["optimizer"]["learning_rate"] = 0.01
  with open(path, "w") as f:
    json.dump(config, f)
  _, err = _run(root, rc=2)
  line = _one_error_line(err)
  assert "config.json disagrees with run.json" in line and \
      "optimizer.learning_rate is 0.01 in config.json, 0.003 in run.json" in line, line
  _, err = _run(root, "--config.optimizer.learning_rate=0.01", rc=2)  # the edit's run
  assert "0.003 in its checkpoint step" in _one_error_line(err)  # the checkpoint decides
  os.remove(path)  # the remedy it names
  _run(root)
  assert _summary(root) == _summary(reference)


# 3. locks --------------------------------------------------------------------------------

def _age(path, seconds):
  t = time.time() - seconds
  os.utime(path, (t, t))


@pytest.mark.parametrize("content,problem", [(b"", "is empty"), (b"{\"host\": \"a", "is not JSON"),
                                             (b"42", "holds '42', not a lock record"),
                                             (b"[1, 2]", "not a lock record")])
def test_ownerless_lock_is_diagnosed_then_taken_over_when_stale(tmp_path, capsys, content,
                                                                problem, monkeypatch):
  monkeypatch.setattr(time, "sleep", lambda s: None)  # the short re-reads of a young lock
  root = workdir.workdir_path(tmp_path)
  lock = tmp_path / "run.lock"
  lock.write_bytes(content)
  with pytest.raises(UserError) as e:
    workdir.WorkdirLock(root).acquire()
  message = str(e.value)
  assert "\n" not in message and problem in message and "owner unknown" in message
  assert " s old" in message and f"rm {lock}" in message
  assert lock.read_bytes() == content  # young: left alone
  _age(lock, workdir.STALE_LOCK_SECONDS + 5)
  with workdir.WorkdirLock(root) as taken:
    assert json.loads(lock.read_text())["token"] == taken.owner["token"]
  assert "took over the lock" in capsys.readouterr().err
  assert not lock.exists() and os.listdir(tmp_path) == []  # nothing left behind


def test_lock_that_is_a_directory_is_one_line_and_never_removed(tmp_path):
  (tmp_path / "run.lock").mkdir()
  _age(tmp_path / "run.lock", 3600)
  with pytest.raises(UserError, match=r"run.lock is a directory \(owner unknown, 60 min "
                                      r"old\); remove it \(rmdir "):
    workdir.WorkdirLock(workdir.workdir_path(tmp_path)).acquire()
  assert (tmp_path / "run.lock").is_dir()


@pytest.mark.parametrize("fail", ["write", "fsync"])
def test_lock_write_on_a_full_disk_leaves_no_lock(tmp_path, monkeypatch, fail):
  root = workdir.workdir_path(tmp_path)
  real = getattr(os, fail)

  def full(*args):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, fail, full)
  with pytest.raises(UserError, match=f"^no space left on device: {tmp_path} "):
    workdir.WorkdirLock(root).acquire()
  assert os.listdir(tmp_path) == []  # no empty run.lock, no temporary
  monkeypatch.setattr(os, fail, real)  # space freed: the next run takes it at once
  with workdir.WorkdirLock(root):
    assert (tmp_path / "run.lock").exists()


# 4. full disk ----------------------------------------------------------------------------

def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path,
                                                                        monkeypatch):
  path = tmp_path / "run.json"
  path.write_text("old\n")

  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(UserError, match=f"^no space left on device: {path} .*rerun the same"):
    workdir.write_text_atomic(workdir.workdir_path(path), "new\n")
  assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["run.json"]


def test_tensorboard_write_error_is_one_line_on_the_main_thread(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path))
  writer.write(1, "train", {"loss": 1.0})
  writer.flush()
  inner = writer._tb_errors.inner

  class Full:
    def write(self, data):
      raise OSError(errno.ENOSPC, "No space left on device")
    flush = close = lambda self: None
  writer._tb_errors.inner = Full()
  for step in range(2, 40):  # more than tensorboardX's queue: must not block
    writer.write(step, "train", {"loss": 1.0})
  deadline = time.time() + 30  # the event thread meets the error
  while writer._tb_errors.error is None and time.time() < deadline:
    time.sleep(0.01)
  with pytest.raises(UserError, match=f"^no space left on device: {tmp_path}/tensorboard "):
    writer.flush()
  writer._tb_errors.inner = inner
  writer._tb.close()
  writer._jsonl.close()


@pytest.fixture
def small_disk(tmp_path):
  point = tmp_path / "disk"
  point.mkdir()
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(point)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()[:100]}")
  try:
    yield point
  finally:
    subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(directory):
  """Writes zeros into ``directory/filler`` until the filesystem is full."""
  with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
    try:
      while True:
        f.write(b"\0" * (1 << 16))
    except OSError as e:
      assert e.errno == errno.ENOSPC
    try:
      while True:
        f.write(b"\0" * 512)
    except OSError:
      pass


def test_disk_full_mid_run_is_one_line_and_the_rerun_ends_like_an_uninterrupted_run(
    reference, small_disk):
  root = str(small_disk / "run")
  proc = _start(root)
  first = os.path.join(root, "checkpoints", "5")
  _wait_for(proc, lambda: os.path.isdir(first), "the first checkpoint")
  proc.send_signal(signal.SIGSTOP)
  _fill(small_disk)
  proc.send_signal(signal.SIGCONT)
  out, err = proc.communicate(timeout=400)
  assert proc.returncode == 2, (proc.returncode, err[-3000:])
  line = _one_error_line(err, "error: no space left on device: ")
  assert root in line and "rerun the same command" in line, line
  assert "Traceback" not in err and "Exception" not in err
  assert not glob.glob(os.path.join(root, "**", "*.tmp-*"), recursive=True)
  assert not os.path.exists(os.path.join(root, "run.lock"))
  steps = [int(n) for n in os.listdir(os.path.join(root, "checkpoints")) if n.isdigit()]
  assert steps and max(steps) < STEPS  # the last good checkpoint stays
  os.remove(small_disk / "filler")  # space freed
  _run(root)
  assert _rows(root) == _rows(reference)
  assert _summary(root) == _summary(reference)


# 5. a non-UTF-8 metrics line -------------------------------------------------------------

def test_non_utf8_metrics_line_is_reported_and_skipped(tmp_path, capsys):
  good = [{"step": 1, "split": "train", "loss": 1.0}, {"step": 2, "split": "train", "loss": 0.5}]
  with open(tmp_path / "metrics.jsonl", "wb") as f:
    f.write(json.dumps(good[0]).encode() + b"\n" + b'{"step": 2, "spl\xff\xfe"}\n'
            + json.dumps(good[1]).encode() + b"\n")
  assert metric_writers.read_metrics(tmp_path) == good
  err = capsys.readouterr().err
  assert f"{tmp_path}/metrics.jsonl:2: not UTF-8" in err and "skipped" in err
  writer = metric_writers.MetricWriter(str(tmp_path), start_step=2)  # a resume reads it too
  writer.close()
  assert metric_writers.read_metrics(tmp_path) == good


# 6. signals ------------------------------------------------------------------------------

def test_ctrl_c_with_data_workers_is_one_line(tmp_path):
  root = str(tmp_path / "run")
  proc = _start(root, "--config.data_workers=1", "--config.num_train_steps=400",
                start_new_session=True)
  _wait_for(proc, lambda: os.path.isdir(os.path.join(root, "checkpoints", "5")),
            "the first checkpoint")
  os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
  out, err = proc.communicate(timeout=400)
  assert proc.returncode == 130, (proc.returncode, err[-3000:])
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  lines = _messages(err)
  assert lines[0].startswith("cfsnn_jax: SIGINT: finishing the current step"), err[-3000:]
  assert [l for l in lines if l.startswith("interrupted: SIGINT at step ")], err[-3000:]


def test_sigterm_during_the_report_finishes_it_and_exits_0(tmp_path):
  root = str(tmp_path / "run")
  proc = _start(root, args=(f"--config={REPO}/configs/default.py:tiny",))
  _wait_for(proc, lambda: os.path.exists(os.path.join(root, "curves.png")),
            "the end-of-run report")
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=400)
  assert proc.returncode == 0, (proc.returncode, err[-3000:])
  assert "SIGTERM: training is finished and checkpointed; finishing the end-of-run report, " \
         "then exiting 0" in err and "saving a checkpoint" not in err, err[-3000:]
  assert os.path.exists(os.path.join(root, "summary.json")) and "final: " in out
