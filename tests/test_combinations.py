"""Every combination a config allows trains end to end, with the analysis report.

Factors: the ``:tiny`` branch of every shipped config (14) x ``model.remat`` {none, neuron,
block, block_full} x ``compute_dtype`` {float32, bfloat16} x neuron preset {lif, plif, cf,
cf_signed, dsatgo} x ``data_workers`` {0, 1} x devices {1, 4} (4 simulated by conftest; 1 by
restricting jax to its first device). The full product (14 x 4 x 2 x 5 x 2 x 2 = 4480 runs)
is far too slow, so the design is a covering one, ``DESIGN`` (20 runs):
- rows 0-19 are the full remat x neuron grid (every pair of those two, 20 = 4 x 5);
- dtype, workers and devices are set per row so that every pair of values of any two of the
  five non-config factors occurs at least once (``test_design_covers_every_pair`` checks it);
- every config appears at least once (rows 0-13 take the 14 configs in order, rows 14-19 the
  cheapest, ``default:tiny``). Config x factor pairs are not all covered: that would need at
  least 14 x 5 = 70 full runs.
Each run is a full ``run.run`` (training, then the analysis report: energy, firing
rates, gradient availability) in this one process. Separately, the energy estimate is the
same with and without rematerialisation.
"""

from __future__ import annotations

import itertools
import json
import os

import jax
import numpy as np
import pytest

from cfsnn_jax import main, run
from cfsnn_jax.training import steps

REMATS = ("none", "neuron", "block", "block_full")
DTYPES = ("float32", "bfloat16")
NEURONS = ("lif", "plif", "cf", "cf_signed", "dsatgo")
WORKERS = (0, 1)
DEVICES = (1, 4)
CONFIGS = sorted(main.shipped_configs())


def _design() -> list[dict]:
  rows = []
  for i, (r, n) in enumerate(itertools.product(range(4), range(5))):
    rows.append({"config": CONFIGS[i] if i < len(CONFIGS) else "default",
                 "remat": REMATS[r], "neuron": NEURONS[n],
                 "compute_dtype": DTYPES[(r + n) % 2],
                 "data_workers": WORKERS[(n + r // 2) % 2],
                 "devices": DEVICES[(n // 2 + r) % 2 if n != 4 else (r // 2 + 1) % 2]})
  return rows


DESIGN = _design()
FACTORS = ("remat", "neuron", "compute_dtype", "data_workers", "devices")


def test_design_covers_every_pair():
  levels = {"remat": REMATS, "neuron": NEURONS, "compute_dtype": DTYPES,
            "data_workers": WORKERS, "devices": DEVICES}
  for a, b in itertools.combinations(FACTORS, 2):
    seen = {(row[a], row[b]) for row in DESIGN}
    missing = set(itertools.product(levels[a], levels[b])) - seen
    assert not missing, (a, b, missing)
  assert {row["config"] for row in DESIGN} == set(CONFIGS)
  assert len(DESIGN) == 20


@pytest.fixture
def devices(request, monkeypatch):
  """Restricts jax to its first device when the row asks for 1."""
  def use(n):
    if n == 1:
      first = jax.devices()[:1]
      monkeypatch.setattr(jax, "devices", lambda *a, **k: list(first))
      monkeypatch.setattr(jax, "device_count", lambda *a, **k: 1)
    else:
      assert jax.device_count() == n
  return use


@pytest.mark.parametrize("row", DESIGN, ids=lambda r: "-".join(str(r[k]) for k in
                                                                ("config",) + FACTORS))
def test_combination_trains_with_the_analysis_report(row, tmp_path, devices):
  parsed = main.parse_and_validate([
      "main", f"--config={row['config']}:tiny", f"--workdir={tmp_path / 'w'}",
      f"--config.model.remat={row['remat']}", f"--config.neuron.name={row['neuron']}",
      f"--config.compute_dtype={row['compute_dtype']}",
      f"--config.data_workers={row['data_workers']}"])
  config = parsed.config
  devices(row["devices"])
  summary = run.run(config, parsed.workdir)  # training, then the end-of-run report
  assert summary["steps"] == config.num_train_steps
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  assert np.isfinite(summary["test_firing_rate"])
  assert np.isfinite(summary["energy_mj_per_image"]) and summary["energy_mj_per_image"] > 0
  with open(os.path.join(parsed.workdir, "summary.json")) as f:
    assert json.load(f)["steps"] == config.num_train_steps
  assert os.path.isdir(os.path.join(parsed.workdir, "checkpoints", str(config.num_train_steps)))
  assert os.path.exists(os.path.join(parsed.workdir, "energy.json"))


@pytest.mark.parametrize("config_name,blocks", [("cifar100", (1, 1, 1)), ("default", None)])
def test_energy_is_the_same_with_and_without_remat(config_name, blocks):
  from flax import nnx

  from cfsnn_jax import data
  from cfsnn_jax.analysis import energy
  from cfsnn_jax.data import pipeline

  energies = {}
  for remat in REMATS:
    config = main.parse_and_validate(["main", f"--config={config_name}:tiny",
                                      f"--config.model.remat={remat}"]).config
    if blocks:  # one block per stage: the same checkpointed BasicBlocks, less to trace
      with config.unlocked():
        config.model.stage_blocks = blocks
    splits = data.load_dataset(config)
    model = steps.build_model(config, splits.info, nnx.Rngs(params=jax.random.key(0)))
    model.eval()
    batches = pipeline.EvalBatches(splits.test, 8, transform=data.eval_transform(
        config, splits.info))
    report = energy.measure_energy(model, batches, max_batches=1)
    energies[remat] = (report.energy_mj, [(r.name, r.macs, r.steps) for r in report.rows])
  base_mj, base_rows = energies["none"]
  assert base_mj > 0
  for remat, (mj, rows) in energies.items():
    assert rows == base_rows, remat
    np.testing.assert_allclose(mj, base_mj, rtol=1e-5, err_msg=remat)
