"""Training at scale: data parallel equals one device, exact resume after SIGKILL, atomic
checkpoints, incompatible checkpoints, fine-tuning, mixed precision, two processes."""

import functools
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cfsnn_jax import data, run
from cfsnn_jax.training import checkpointing, optim, steps, loop as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import default as default_config  # noqa: E402
from configs import mnist5k as mnist5k_config  # noqa: E402


def _grads_on(devices, config, batch):
  info = data.load_dataset(config).info
  graphdef, _, state, _, _ = steps.create_train_state(config, info, 10)
  mesh = steps.make_mesh(devices)
  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params, rest = jax.device_put((state["params"], state["rest"]), rep)
  batch = jax.device_put(batch, shard)
  fn = jax.jit(functools.partial(steps.loss_and_grads, graphdef=graphdef, loss_cfg=config.loss))
  out = fn(params, rest, batch)
  return jax.device_get((out.loss, out.grads, out.rest))


@pytest.mark.parametrize("neuron", ["cf", "dsatgo"])
def test_four_devices_equal_one_device(neuron):
  assert jax.device_count() == 4
  config = mnist5k_config.get_config("tiny")
  config.neuron.name = neuron
  splits = data.load_dataset(config)
  batch = {"image": splits.train.arrays["image"][:16], "label": splits.train.arrays["label"][:16]}
  one = _grads_on(jax.devices()[:1], config, batch)
  four = _grads_on(jax.devices(), config, batch)
  np.testing.assert_allclose(one[0], four[0], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(one[1]), jax.tree.leaves(four[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # BatchNorm running statistics and DS-ATGO threshold EMAs: global-batch statistics.
  for a, b in zip(jax.tree.leaves(one[2]), jax.tree.leaves(four[2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _run_cli(workdir, *overrides, wait=True):
  cmd = [sys.executable, "-m", "cfsnn_jax.main", f"--workdir={workdir}",
         "--config=configs/default.py", "--config.progress_bar=False", *overrides]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  if wait:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out
  return proc


def _saved_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))


RESUME_ARGS = ("--config.num_train_steps=240", "--config.checkpoint_every_steps=20",
               "--config.eval_every_steps=1000", "--config.model.hidden=(64,)")


def test_sigkill_then_resume_is_bitwise_equal(tmp_path):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  _run_cli(straight, *RESUME_ARGS)
  proc = _run_cli(killed, *RESUME_ARGS, wait=False)
  marker = os.path.join(killed, "checkpoints", "40")
  deadline = time.time() + 300
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(d) for d in os.listdir(os.path.join(killed, "checkpoints")) if d.isdigit())
  assert steps and steps[-1] < 240, f"run finished before the kill: {steps}"
  out = _run_cli(killed, *RESUME_ARGS)
  assert "resuming at step" in out
  a, b = _saved_params(straight, 240), _saved_params(killed, 240)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def test_interrupted_save_never_becomes_latest(tmp_workdir):
  config = default_config.get_config("tiny")  # checkpoints at steps 3 and 6
  train.train_and_evaluate(config, tmp_workdir)
  ckpt_dir = os.path.join(tmp_workdir, "checkpoints")
  # a save that died half-way: orbax's temporary directory, never renamed
  partial = os.path.join(ckpt_dir, "9.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(partial, "state"))
  with open(os.path.join(partial, "state", "junk"), "w") as f:
    f.write("half")
  manager = checkpointing.make_manager(tmp_workdir)
  assert manager.latest_step() == 6
  info = data.load_dataset(config).info
  _, _, state, _, _ = steps.create_train_state(config, info, 6)
  restored, step = checkpointing.restore_latest(manager, state, None)
  assert step == 6 and int(restored["step"]) == 6


def test_incompatible_checkpoint_fails_with_one_line(tmp_workdir):
  config = default_config.get_config("tiny")
  train.train_and_evaluate(config, tmp_workdir)
  config.model.hidden = (16,)
  with pytest.raises(ValueError, match="holds another run: model.hidden") as e:
    train.train_and_evaluate(config, tmp_workdir)  # refused from config.json, before writing
  assert "\n" not in str(e.value)
  info = data.load_dataset(config).info
  _, _, state, _, _ = steps.create_train_state(config, info, 6)
  with pytest.raises(ValueError, match="does not match this model/config") as e:
    checkpointing.restore_latest(checkpointing.make_manager(tmp_workdir), state, None)
  assert "\n" not in str(e.value)


def test_init_from_copies_parameters_not_optimizer(tmp_path):
  config = default_config.get_config("tiny")
  src = str(tmp_path / "src")
  trained = train.train_and_evaluate(config, src)["state"]
  info = data.load_dataset(config).info
  _, _, fresh, _, _ = steps.create_train_state(config, info, 6)
  tuned = checkpointing.init_from(src, fresh)
  for x, y in zip(jax.tree.leaves(tuned["params"]), jax.tree.leaves(trained["params"])):
    np.testing.assert_array_equal(x, y)
  assert int(tuned["step"]) == 0
  with pytest.raises(ValueError, match="init_from: no checkpoints directory"):
    checkpointing.init_from(str(tmp_path / "nowhere"), fresh)
  # fine-tuning with another optimizer / clipping: only params and rest must match
  other = default_config.get_config("tiny")
  other.optimizer.name, other.optimizer.grad_clip = "sgd", 1.0
  _, _, fresh_sgd, _, _ = steps.create_train_state(other, info, 6)
  tuned = checkpointing.init_from(src, fresh_sgd)
  for x, y in zip(jax.tree.leaves(tuned["params"]), jax.tree.leaves(trained["params"])):
    np.testing.assert_array_equal(x, y)
  assert jax.tree.structure(tuned["opt_state"]) == jax.tree.structure(fresh_sgd["opt_state"])
  wider = default_config.get_config("tiny")
  wider.model.hidden = (48,)
  _, _, fresh_wide, _, _ = steps.create_train_state(wider, info, 6)
  with pytest.raises(checkpointing.MismatchError,
                     match=r"params/.* has shape .* in the checkpoint, .* in the model"):
    checkpointing.init_from(src, fresh_wide)


def test_batch_size_not_divisible_by_devices(tmp_workdir):
  config = default_config.get_config("tiny")
  config.batch_size = 6
  with pytest.raises(ValueError, match="batch_size 6 is not divisible by the device count 4"):
    train.train_and_evaluate(config, tmp_workdir)


def test_bfloat16_compute_keeps_float32_parameters(tmp_workdir):
  config = default_config.get_config("tiny")
  config.compute_dtype = "bfloat16"
  summary = run.run(config, tmp_workdir)
  leaves = jax.tree.leaves(summary["state"]["params"])
  assert all(x.dtype == jnp.float32 for x in leaves)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
  assert os.path.exists(os.path.join(tmp_workdir, "curves.png"))


def test_weight_decay_mask_skips_bn_bias_and_neuron_parameters():
  config = mnist5k_config.get_config("tiny")
  config.neuron.charge = "plif"
  info = data.load_dataset(config).info
  _, _, state, _, _ = steps.create_train_state(config, info, 10)
  mask = optim.decay_mask(state["params"])
  flat = {"/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)): v
          for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = {k for k, v in flat.items() if v}
  assert decayed and all(k.endswith("kernel") for k in decayed), decayed
  assert any(k.endswith("rho") for k in flat) and any(k.endswith("decay_logit") for k in flat)
  assert any(k.endswith("scale") for k in flat) and any(k.endswith("bias") for k in flat)


def test_cosine_schedule_with_warmup():
  cfg = default_config.get_config().optimizer
  cfg.warmup_steps = 10
  sched = optim.learning_rate_schedule(cfg, 110)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(10)), cfg.learning_rate, rtol=1e-6)
  np.testing.assert_allclose(float(sched(60)), cfg.learning_rate / 2, rtol=1e-3)
  assert float(sched(110)) < 1e-8


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


TWO_PROCESS_SCRIPT = r"""
import os, sys, jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
sys.path.insert(0, os.getcwd())
import numpy as np
from configs import default
from cfsnn_jax.training import loop as train
config = default.get_config("tiny")
summary = train.train_and_evaluate(config, sys.argv[3])
leaves = jax.tree.leaves(summary["state"]["params"])
total = sum(float(np.asarray(jax.device_get(x.addressable_data(0))).astype(np.float64).sum())
            for x in leaves)
print("PARAMSUM", repr(total), jax.process_count(), jax.device_count())
"""


def test_two_processes_on_loopback_agree(tmp_path):
  addr = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  workdir = str(tmp_path / "mp")
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_SCRIPT, addr, str(i), workdir],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  sums = [l for out, _ in outs for l in out.splitlines() if l.startswith("PARAMSUM")]
  assert len(sums) == 2
  vals = [s.split() for s in sums]
  assert vals[0][1] == vals[1][1], sums  # identical parameters on both processes
  assert vals[0][2:] == ["2", "4"]  # 2 processes, 4 devices in one mesh
  # only process 0 wrote metrics; both saved the shared checkpoint
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))
