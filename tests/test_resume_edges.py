"""Resume edges: a data-iterator state that does not restore is named as such and the run
resumes from that step's model state; a ``data_workers >= 1`` run leaves no shared memory
behind (no resource-tracker warning on the CLI's stderr)."""

import os
import subprocess
import sys

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from cfsnn_jax.training import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _checkpointed(tmp_path, steps=(1, 2)):
  state = {"params": {"w": jnp.arange(64, dtype=jnp.float32)}, "step": jnp.int32(0)}
  it = _iterator()
  manager = checkpointing.make_manager(str(tmp_path), keep=3)
  for step in steps:
    next(it)
    state = {"params": {"w": state["params"]["w"] + 1}, "step": jnp.int32(step)}
    checkpointing.save(manager, step, state, it, {"history": {"best_accuracy": step / 10}})
  manager.wait_until_finished()
  return manager, state


def _data_file(tmp_path, step):
  d = os.path.join(str(tmp_path), "checkpoints", str(step), "data")
  (name,) = [f for f in os.listdir(d) if f.endswith(".json")]
  return os.path.join(d, name)


def test_intact_data_state_restores_the_position(tmp_path, capsys):
  manager, template = _checkpointed(tmp_path)
  it = _iterator()
  restored = checkpointing.restore_newest_intact(manager, template, it)
  assert restored.step == 2 and next(it) == 2  # two elements were consumed before the save
  assert "data iterator" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "other_format", "missing"])
def test_data_state_that_does_not_restore_is_named_and_the_step_resumes(damage, tmp_path,
                                                                       capsys):
  manager, template = _checkpointed(tmp_path)
  path = _data_file(tmp_path, 2)
  if damage == "garbage":
    open(path, "w").write("{not json")
  elif damage == "other_format":  # e.g. written with worker processes
    open(path, "w").write('{"workers_state": {"0": "x"}, "iterations_to_skip": {}}')
  else:
    os.remove(path)
  manager.reload()
  it = _iterator()
  restored = checkpointing.restore_newest_intact(manager, template, it)
  assert restored.step == 2 and restored.metadata["history"] == {"best_accuracy": 0.2}
  np.testing.assert_array_equal(restored.state["params"]["w"], np.arange(64) + 2)
  assert next(it) == 0  # a fresh iterator: nothing half-restored
  lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(lines) == 1, lines
  assert "the data iterator's saved position at step 2" in lines[0]
  assert "resuming the model, optimizer and step from it" in lines[0]
  assert "damaged" not in lines[0] and "trying the next older step" not in lines[0]
  assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints_damaged"))
  assert manager.all_steps() == [1, 2]


def _cli(workdir, *extra):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (
      REPO, os.environ.get("PYTHONPATH")))))
  proc = subprocess.run(
      [sys.executable, "-m", "cfsnn_jax.main", f"--config={REPO}/configs/default.py:tiny",
       f"--workdir={workdir}", "--config.progress_bar=False", "--config.analysis_report=False",
       "--config.num_train_steps=4", "--config.checkpoint_every_steps=2",
       "--config.eval_every_steps=4", *extra],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, proc.stderr


def test_worker_run_leaves_no_shared_memory_and_resumes_past_a_bad_data_state(tmp_path):
  workdir = str(tmp_path / "run")
  out, err = _cli(workdir, "--config.data_workers=1")
  assert "final: test_accuracy=" in out
  assert "leaked shared_memory" not in err and "resource_tracker" not in err, err[-2000:]
  # the run's latest data state damaged, the run made resumable again: it resumes at step 4
  open(_data_file(workdir, 4), "w").write("{not json")
  os.remove(os.path.join(workdir, "summary.json"))
  out, err = _cli(workdir, "--config.data_workers=1")
  assert "resuming at step 4" in out and "final: test_accuracy=" in out
  assert "the data iterator's saved position at step 4" in err
  assert "does not restore (" in err and "trying the next older step" not in err
  assert "leaked shared_memory" not in err
  assert not os.path.exists(os.path.join(workdir, "checkpoints_damaged"))


# (config module, its model family): every family's :tiny branch
FAMILIES = [("default", "mlp"), ("mnist5k", "convnet"), ("cifar10", "resnet19"),
            ("cifar10_dvs", "vggsnn"), ("cifar10_spikformer", "spikformer"),
            ("sst2", "text_transformer")]


@pytest.mark.parametrize("config_name, family", FAMILIES)
def test_every_remat_mode_saves_the_same_state_tree(config_name, family):
  """What makes ``model.remat`` run-only: the checkpointed tree (paths, shapes, dtypes) is the
  same for every mode, so a run resumes under another (memory only)."""
  import importlib

  import jax

  from cfsnn_jax import data
  from cfsnn_jax.config import resolve
  from cfsnn_jax.neuron.remat import REMATS
  from cfsnn_jax.training import steps
  sys.path.insert(0, REPO)
  module = importlib.import_module(f"configs.{config_name}")
  trees = {}
  for remat in REMATS:
    config = module.get_config("tiny")
    config.model.remat = remat
    run = resolve(config)
    assert config.model.name == family
    info = data.load_dataset(run.config).info
    state = jax.eval_shape(lambda: steps.create_train_state(run, info, 10).state)
    trees[remat] = [(jax.tree_util.keystr(p), v.shape, str(v.dtype))
                    for p, v in jax.tree_util.tree_leaves_with_path(state)]
  assert len(trees["none"]) > 3
  for remat, tree in trees.items():
    assert tree == trees["none"], f"{family}: remat={remat} saves another state tree"


def test_workdir_of_another_remat_resumes(tmp_path):
  from cfsnn_jax.config import resolve
  from cfsnn_jax.training import workdir
  sys.path.insert(0, REPO)
  from configs import default as default_config
  root = workdir.workdir_path(str(tmp_path / "run"))
  root.mkdir()
  config = default_config.get_config("tiny")
  desc = workdir.run_description(resolve(config))
  workdir.write_description(root, desc, workdir.inspect(root, desc))
  (root / "checkpoints" / "3").mkdir(parents=True)
  config.model.remat = "block_full"
  assert workdir.inspect(root, workdir.run_description(resolve(config))).kind == "resume"
  config.model.remat, config.num_steps = "none", config.num_steps + 1  # not run-only
  with pytest.raises(Exception, match="holds another run: num_steps"):
    workdir.inspect(root, workdir.run_description(resolve(config)))


def test_added_model_fields_match_the_models_and_guard_older_workdirs(tmp_path):
  """A ResNet workdir written before ``model.conv_padding`` existed was trained with flax's
  SAME padding: resuming it under the new default is refused naming the field, and the
  documented ``--config.model.conv_padding=flax_same`` resumes it; new run.json files name
  the padding (and the head form) explicitly."""
  import inspect
  import json

  from cfsnn_jax.config import resolve, schema
  from cfsnn_jax.models import resnet
  from cfsnn_jax.training import workdir
  sys.path.insert(0, REPO)
  from configs import cifar10
  defaults = inspect.signature(resnet.SpikingResNet.__init__).parameters
  for field, (names, now, _) in workdir.ADDED_MODEL_FIELDS.items():
    assert defaults[field].default == now, field
    taking = {m for m, fields in schema.MODEL_FIELDS.items()
              if any(f.path.split(".")[-1] == field for f in fields)}
    assert taking == set(names), (field, taking)

  root = workdir.workdir_path(str(tmp_path / "run"))
  root.mkdir()
  desc = workdir.run_description(resolve(cifar10.get_config("tiny")))
  assert desc["config"]["model"]["conv_padding"] == "symmetric"
  assert desc["config"]["model"]["head_form"] == "biased"
  workdir.write_description(root, desc, workdir.inspect(root, desc))
  (root / "checkpoints" / "3").mkdir(parents=True)
  for name in ("run.json", "config.json"):  # as a workdir of the earlier version
    d = json.loads((root / name).read_text())
    model = (d["config"] if "config" in d else d)["model"]
    del model["conv_padding"], model["head_form"]
    (root / name).write_text(json.dumps(d))

  def kind(**model):
    config = cifar10.get_config("tiny")
    config.model.update(model)
    return workdir.inspect(root, workdir.run_description(resolve(config))).kind

  for model in ({}, {"conv_padding": "symmetric"}):
    with pytest.raises(Exception, match='holds another run: model.conv_padding is "flax_same" '
                       'there, "symmetric" here'):
      kind(**model)
  assert kind(conv_padding="flax_same") == "resume"
  assert kind(conv_padding="flax_same", head_form="biased") == "resume"
