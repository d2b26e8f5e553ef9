"""End-to-end training on the embedded default and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import jax
import pytest

from cfsnn_jax import run
from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.training import loop as train
from cfsnn_jax.training.metric_writers import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import default as default_config  # noqa: E402


def test_tiny_default_trains_and_writes_workdir(tmp_workdir):
  config = default_config.get_config("tiny")
  summary = run.run(config, tmp_workdir)
  assert summary["steps"] == 6
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  files = os.listdir(tmp_workdir)
  assert {"config.json", "metrics.jsonl", "summary.json", "tensorboard", "curves.png",
          "energy.json", "energy.md", "analysis.json", "firing_rates.png",
          "membrane_hist.png", "grad_available.png", "alphas.png"} <= set(files)
  assert summary["energy_mj_per_image"] > 0
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(tmp_workdir, "tensorboard")))
  rows = read_metrics(tmp_workdir)
  assert {r["split"] for r in rows} >= {"train", "test", "summary", "neurons"}
  neuron_rows = [r for r in rows if r["split"] == "neurons"]
  assert any(k.startswith("alpha/") for k in neuron_rows[0])  # learned alphas per eval
  train_rows = [r for r in rows if r["split"] == "train"]
  assert all(k in train_rows[0] for k in ("loss", "pn_loss", "accuracy", "firing_rate"))
  with open(os.path.join(tmp_workdir, "config.json")) as f:
    assert json.load(f)["neuron"]["name"] == "cf"


def test_default_reaches_95_percent_on_digits(tmp_workdir):
  config = default_config.get_config()
  config.progress_bar = False
  summary = train.train_and_evaluate(config, tmp_workdir)
  assert summary["test_accuracy"] >= 0.95, summary


@pytest.mark.parametrize("field,value,match", [
    ("neuron.name", "lfi", "unknown neuron 'lfi'; valid choices: if, lif, plif, cf"),
    ("neuron.surrogate", "sigmoidal", "unknown surrogate 'sigmoidal'; valid choices"),
    ("dataset", "imagenet21k", "unknown dataset 'imagenet21k'; valid choices:"),
    ("model.name", "resnet1000", "unknown model 'resnet1000'; valid choices:"),
    ("loss.name", "hinge", "unknown loss 'hinge'; valid choices: ce, tet"),
    ("num_steps", 0, r"config.num_steps=0: expected int >= 1"),
    ("neuron.levels", 0, r"config.neuron.levels=0: expected int >= 1"),
    ("neuron.threshold", 0.0, r"config.neuron.threshold=0.0: expected float > 0"),
    ("optimizer.name", "lamb", "unknown optimizer 'lamb'"),
])
def test_bad_config_fails_before_compilation(field, value, match, tmp_workdir, monkeypatch):
  config = default_config.get_config("tiny")
  node = config
  *path, leaf = field.split(".")
  for p in path:
    node = getattr(node, p)
  setattr(node, leaf, value)

  def no_compile(*a, **k):
    raise AssertionError("compiled before validating the config")
  monkeypatch.setattr(jax, "jit", no_compile)
  with pytest.raises(ValueError, match=match) as e:
    train.train_and_evaluate(config, tmp_workdir)
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_workdir)  # nothing written either


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "cfsnn_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_one_line_errors(tmp_workdir):
  r = _cli(f"--workdir={tmp_workdir}", "--config.neuron.name=foo")
  assert r.returncode == 2
  err = [l for l in r.stderr.splitlines() if l.strip()]
  assert err == ["error: unknown neuron 'foo'; valid choices: if, lif, plif, cf, cf_signed, "
                 "dsatgo"], r.stderr
  r = _cli(f"--workdir={tmp_workdir}", "--config.neuron.levles=2")
  assert r.returncode != 0 and "levels" in r.stderr and "did you mean" in r.stderr.lower()


def test_validate_accepts_all_presets():
  for name in ("if", "lif", "plif", "cf", "cf_signed", "dsatgo"):
    config = default_config.get_config()
    config.neuron.name = name
    config_schema.validate_config(config)
    assert config_schema.neuron_spec(config.neuron).levels >= 1
