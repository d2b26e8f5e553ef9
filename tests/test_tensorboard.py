"""TensorBoard holds what researchers look at: learning rate, per-layer firing rates per time
step, potential histograms, learned alphas, DS-ATGO thresholds, the figures, the config as
hparams. Read back from the event files (TFRecord framing + tensorboardX's protos; no TF)."""

import glob
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from cfsnn_jax import run
from cfsnn_jax.neuron import equations as neurons
from cfsnn_jax.analysis import spiking_stats
from cfsnn_jax.configs import default as default_config
from cfsnn_jax.training.metric_writers import MetricWriter, read_metrics
from cfsnn_jax.training.metric_writers import flat_hparams


def _events(logdir):
  out = []
  for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents*"),
                               recursive=True)):
    data = open(path, "rb").read()
    i = 0
    while i + 12 <= len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      out.append(event)
      i += 12 + n + 4
  return out


def _by_kind(events):
  kinds = {"scalar": {}, "histo": {}, "image": {}, "plugin": set()}
  for e in events:
    for v in e.summary.value:
      if v.HasField("histo"):
        kinds["histo"].setdefault(v.tag, []).append(e.step)
      elif v.HasField("image"):
        kinds["image"][v.tag] = (v.image.width, v.image.height)
      elif v.metadata.plugin_data.plugin_name:
        kinds["plugin"].add(v.metadata.plugin_data.plugin_name)
      else:
        kinds["scalar"].setdefault(v.tag, []).append((e.step, v.simple_value))
  return kinds


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tb"))
  config = default_config.get_config("tiny")
  summary = run.run(config, workdir)  # the loop, its on_eval statistics, the report
  return workdir, config, summary, _by_kind(_events(os.path.join(workdir, "tensorboard")))


def test_training_run_writes_researcher_tensorboard(tiny_run):
  workdir, config, summary, tb = tiny_run
  scalars = tb["scalar"]
  lr = dict(scalars["optimizer/learning_rate"])
  assert len(lr) >= 2
  from cfsnn_jax.training import optim
  schedule = optim.learning_rate_schedule(config.optimizer, summary["steps"])
  for step, value in lr.items():
    assert value == pytest.approx(float(schedule(step - 1)), rel=1e-5)
  layers = ["neurons.0"]  # the tiny default MLP's spiking layers
  for layer in layers:
    assert f"firing_rate/{layer}" in scalars
    assert {f"firing_rate_t/{layer}/{t}" for t in range(config.num_steps)} <= set(scalars)
    assert f"potential/{layer}" in tb["histo"]  # membrane potentials at eval
    assert any(k.startswith(f"neurons/alpha/{layer}/") for k in scalars)  # learned alphas
  for name in ("curves", "firing_rates", "membrane_hist", "alphas"):
    w, h = tb["image"][f"figures/{name}"]
    assert 100 < w <= 1600 and 100 < h <= 1600
  assert "hparams" in tb["plugin"]
  assert "summary/test_accuracy" in scalars
  rows = [r for r in read_metrics(workdir) if r["split"] == "optimizer"]
  assert rows and "learning_rate" in rows[0]


def test_dsatgo_thresholds_and_hparams_flattening(tmp_path):
  rng = np.random.default_rng(0)
  spec = neurons.resolve_spec("dsatgo")
  stats = spiking_stats.SpikingStats(
      names=["a", "b"], specs=[spec, spec], training=False, num_examples=8,
      rate_LT=rng.uniform(0, 1, (2, 2)), grad_share_LT=rng.uniform(0, 1, (2, 2)),
      theta_LT=np.array([[0.7, 0.9], [1.1, 1.3]]), alpha_LT=rng.uniform(1, 2, (2, 2)),
      samples=[rng.normal(size=(2, 50)) for _ in range(2)])
  writer = MetricWriter(str(tmp_path))
  writer.write_spiking_stats(5, stats)
  writer.close()
  tb = _by_kind(_events(os.path.join(tmp_path, "tensorboard")))
  assert tb["scalar"]["threshold/b"] == [(5, pytest.approx(1.2))]
  assert set(tb["histo"]) == {"potential/a", "potential/b"}
  flat = flat_hparams(default_config.get_config())
  assert flat["neuron.name"] == "cf" and isinstance(flat["num_steps"], int)
  assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
  disabled = MetricWriter(str(tmp_path / "off"), enabled=False)
  disabled.write_spiking_stats(1, stats)  # other processes: nothing, no error
  disabled.write_hparams(default_config.get_config(), {"x": 1.0})
  assert not os.path.exists(tmp_path / "off")
