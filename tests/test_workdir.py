"""Workdir semantics, the lock, checkpoint fallback and checksum, config guards, and a
non-local workdir (``gs://`` served by an in-memory fsspec filesystem behind etils.epath)."""

import json
import os
import subprocess
import sys

import fsspec
import grain
import jax.numpy as jnp
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.training import checkpointing, workdir as workdir_lib, workdir
from cfsnn_jax.errors import UserError
from cfsnn_jax.training.metric_writers import MetricWriter, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import default as default_config  # noqa: E402


def test_inspect_fresh_resume_finished_and_mismatch(tmp_path):
  root = workdir_lib.workdir_path(str(tmp_path / "run"))
  config = default_config.get_config("tiny")
  desc = workdir.run_description(config)
  assert set(desc["neuron_spec"]) >= {"levels", "surrogate", "alpha", "reset"}
  assert desc["neuron_spec"]["levels"] == 4  # resolved from the cf preset
  assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
          "python"} <= set(desc["versions"])
  assert workdir.inspect(root, desc).kind == "fresh"
  root.mkdir(parents=True)
  status = workdir.inspect(root, desc)
  workdir.write_description(root, desc, status)
  config.progress_bar, config.log_every_steps = True, 7  # run-only: still the same run
  assert workdir.inspect(root, workdir.run_description(config)).kind == "resume"
  from configs import cifar10 as cifar10_config  # tuple-valued data options (mean, std)
  image = cifar10_config.get_config("tiny")
  image_root = workdir_lib.workdir_path(str(tmp_path / "image"))
  image_root.mkdir()
  image_desc = workdir.run_description(image)
  assert isinstance(image_desc["data_options"]["mean"], list)
  workdir.write_description(image_root, image_desc, workdir.inspect(image_root, image_desc))
  assert workdir.inspect(image_root, workdir.run_description(image)).kind == "resume"
  config.optimizer.learning_rate = 0.5
  # stopped before its first checkpoint (a wrong data_dir, say): the corrected run starts afresh
  assert workdir.inspect(root, workdir.run_description(config)).kind == "fresh"
  (root / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)  # unfinished save
  assert workdir.inspect(root, workdir.run_description(config)).kind == "fresh"
  (root / "checkpoints" / "3").mkdir()
  with pytest.raises(UserError, match=r"holds another run: optimizer.learning_rate is 0.003 "
                     r"there, 0.5 here; pass a new --workdir"):
    workdir.inspect(root, workdir.run_description(config))
  config.optimizer.learning_rate = 0.003
  config.data_workers = 1  # the data iterator's saved state depends on it: not run-only
  with pytest.raises(UserError, match=r"holds another run: data_workers is 0 there, 1 here"):
    workdir.inspect(root, workdir.run_description(config))
  (root / "summary.json").write_text(json.dumps({"test_accuracy": 0.5}))
  status = workdir.inspect(root, desc)
  assert status.kind == "finished" and status.summary == {"test_accuracy": 0.5}


def test_lock_refuses_live_and_foreign_owners_and_takes_over_stale(tmp_path, capsys):
  root = workdir_lib.workdir_path(str(tmp_path))
  first = workdir.WorkdirLock(root).acquire()
  with pytest.raises(UserError, match=f"in use by pid {os.getpid()} on host"):
    workdir.WorkdirLock(root).acquire()
  first.release()
  assert not (root / "run.lock").exists()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stale = dict(workdir.WorkdirLock(root).owner, pid=dead.pid)
  (root / "run.lock").write_text(json.dumps(stale))
  with workdir.WorkdirLock(root) as lock:
    assert json.loads((root / "run.lock").read_text())["token"] == lock.owner["token"]
  assert f"took over the stale lock of dead process {dead.pid}" in capsys.readouterr().err
  (root / "run.lock").write_text(json.dumps(dict(stale, host="another-host")))
  with pytest.raises(UserError, match="on host another-host .*delete the lock file"):
    workdir.WorkdirLock(root).acquire()


def _checkpointed(tmp_path, steps=(1, 2)):
  state = {"params": {"w": jnp.arange(4096, dtype=jnp.float32)}, "step": jnp.int32(0)}
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  manager = checkpointing.make_manager(str(tmp_path), keep=3)
  for step in steps:
    next(it)
    state = {"params": {"w": state["params"]["w"] + 1}, "step": jnp.int32(step)}
    checkpointing.save(manager, step, state, it, {"history": {"best_accuracy": step / 10}})
  manager.wait_until_finished()
  return manager, state, it


def _largest_data_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs if os.sep + "d" + os.sep in os.path.join(r, f) + os.sep
           or os.path.basename(r) == "d"]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty_dir", "no_metadata"])
def test_damaged_latest_step_falls_back_to_the_older(damage, tmp_path, capsys):
  manager, template, it = _checkpointed(tmp_path)
  step_dir = os.path.join(str(tmp_path), "checkpoints", "2")
  if damage in ("flip", "truncate"):
    path = _largest_data_file(step_dir)
    data = bytearray(open(path, "rb").read())
    if damage == "flip":  # flips bytes of the array data: it still decodes
      data[len(data) // 2] ^= 0x01
    else:
      data = data[:len(data) // 2]
    open(path, "wb").write(bytes(data))
  elif damage == "empty_dir":
    import shutil
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)
  else:
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
  manager.reload()
  restored = checkpointing.restore_newest_intact(manager, template, it)
  assert restored.step == 1 and restored.metadata["history"] == {"best_accuracy": 0.1}
  np.testing.assert_array_equal(restored.state["params"]["w"], np.arange(4096) + 1)
  err = capsys.readouterr().err
  assert "checkpoint step 2 in" in err and "does not restore" in err
  if damage == "flip":
    assert "checksum mismatch" in err
  assert os.listdir(os.path.join(str(tmp_path), "checkpoints_damaged"))[0].startswith("2-")
  assert manager.all_steps() == [1]
  checkpointing.save(manager, 2, template, it)  # the step can be saved again
  manager.wait_until_finished()


def test_no_intact_step_is_one_line(tmp_path):
  manager, template, it = _checkpointed(tmp_path, steps=(1,))
  path = _largest_data_file(os.path.join(str(tmp_path), "checkpoints", "1"))
  open(path, "wb").close()
  manager.reload()
  with pytest.raises(UserError, match=r"no checkpoint in .* restores \(steps 1 are all "
                     r"damaged\)") as e:
    checkpointing.restore_newest_intact(manager, template, it)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("field,value,match", [
    ("optimizer.learning_rate", float("nan"), r"config.optimizer.learning_rate=nan: expected a "
     "finite number"),
    ("loss.pn_weight", float("nan"), r"config.loss.pn_weight=nan: expected a finite number"),
    ("neuron.alpha", float("inf"), r"config.neuron.alpha=inf: expected a finite number"),
    ("keep_checkpoints", 0, r"config.keep_checkpoints=0: expected int >= 1"),
])
def test_config_rejects_non_finite_floats_and_no_checkpoints(field, value, match):
  config = default_config.get_config("tiny")
  node = config
  *path, leaf = field.split(".")
  for p in path:
    node = getattr(node, p)
  setattr(node, leaf, value)
  with pytest.raises(ValueError, match=match):
    config_schema.validate_config(config)


class _MemoryGCS(MemoryFileSystem):
  """``gs://`` served from memory: what gcsfs would be, offline."""
  protocol = ("gs", "gcs")
  store, pseudo_dirs = {}, [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return "/" + path.strip("/")


@pytest.fixture
def memory_gcs(monkeypatch, tmp_path):
  from etils.epath import backend
  from orbax.checkpoint._src.path import gcs_utils
  # orbax asks the GCS API (google-cloud-storage, network) whether the bucket is hierarchical
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  fsspec.register_implementation("gcs", _MemoryGCS, clobber=True)
  fsspec.register_implementation("gs", _MemoryGCS, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()
  _MemoryGCS.store.clear()
  monkeypatch.chdir(tmp_path)  # a local folder named "gs:" would appear here
  yield _MemoryGCS()
  backend.fsspec_backend._get_filesystem.cache_clear()


def test_gs_workdir_goes_through_epath(memory_gcs, tmp_path):
  root = workdir_lib.workdir_path("gs://bucket/run")
  assert str(root) == "gs://bucket/run" and not workdir_lib.is_local(root)
  config = default_config.get_config("tiny")
  desc = workdir.run_description(config)
  status = workdir.inspect(root, desc)
  assert status.kind == "fresh"
  root.mkdir(parents=True, exist_ok=True)
  with workdir.WorkdirLock(root):
    assert memory_gcs.exists("bucket/run/run.lock")
    with pytest.raises(UserError, match="in use by pid"):
      workdir.WorkdirLock(root).acquire()
    workdir.write_description(root, desc, status)
    writer = MetricWriter(str(root))
    writer.write(1, "train", {"loss": 2.0, "accuracy": 0.1})
    writer.write(2, "train", {"loss": 1.0, "accuracy": 0.2})
    writer.flush()
    assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1, 2]
    writer.close()
    events = memory_gcs.ls("bucket/run/tensorboard", detail=False)
    assert events and all("events.out.tfevents" in e for e in events)
    assert memory_gcs.size(events[0]) > 0
    # a resume at step 1 drops the replayed row of step 2
    MetricWriter(str(root), start_step=1).close()
    assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1]
    from cfsnn_jax.analysis import curves
    with workdir_lib.staged_dir(root, inputs=("metrics.jsonl",)) as local:
      curves.plot_training_curves(local)
    assert memory_gcs.exists("bucket/run/curves.png")
    manager = checkpointing.make_manager("gs://bucket/run")
    assert str(manager.directory) == "gs://bucket/run/checkpoints"
    assert memory_gcs.isdir("bucket/run/checkpoints")
    manager.close()
  assert not memory_gcs.exists("bucket/run/run.lock")
  assert workdir.inspect(root, desc).kind == "resume"
  workdir_lib.write_text_atomic(root / "summary.json", json.dumps({"test_accuracy": 1.0}))
  assert workdir.inspect(root, desc).kind == "finished"
  assert not os.path.exists(tmp_path / "gs:")


def test_second_ctrl_c_exits_at_once():
  code = ("import os, signal, time\n"
          "from cfsnn_jax import run_guard\n"
          "with run_guard.StopSignals() as stop:\n"
          "  os.kill(os.getpid(), signal.SIGINT)\n"
          "  print('noted', stop.received, flush=True)\n"
          "  os.kill(os.getpid(), signal.SIGINT)\n"
          "  time.sleep(30)\n"
          "  print('not reached')\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 128 + 2 and r.stdout.split() == ["noted", "2"], (r.stdout, r.stderr)
  assert "SIGINT: finishing the current step and saving a checkpoint" in r.stderr
  assert "second SIGINT: exiting now without saving" in r.stderr


def test_full_or_read_only_disk_under_orbax_is_one_line(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path))
  try:
    raise RuntimeError("tensorstore write failed") from OSError(28, "No space left on device")
  except RuntimeError as e:
    full = checkpointing._storage_error(manager, e)
  assert isinstance(full, UserError) and str(full) == (
      f"{manager.directory} cannot be written: no space left on the device")
  ro = checkpointing._storage_error(manager, ValueError("... Read-only file system [os_error]"))
  assert str(ro).endswith("is on a read-only filesystem")
  bug = KeyError("a bug")
  assert checkpointing._storage_error(manager, bug) is bug  # everything else keeps its traceback
  manager.close()
