"""CLI of the energy estimate: ``python -m cfsnn_jax.analysis.energy --config=X --workdir=DIR``.

It rebuilds the training state of ``--config`` (``steps.create_train_state``, imported inside
``main``: importing this module imports no model code), restores the latest checkpoint of
``--workdir`` if there is one (fresh parameters otherwise,
said on stdout), runs ``--num_batches`` test batches, prints the per-layer table and writes
``energy.json`` + ``energy.md`` into the workdir. Flags are defined in ``run()`` only, so this
module can be imported next to ``cfsnn_jax.main`` (both define ``--config``).
"""

from __future__ import annotations

import os
import sys


def main(config, workdir: str, num_batches: int, e_mac_pj: float, e_ac_pj: float) -> int:
  from flax import nnx

  from cfsnn_jax import checkpointing, config_schema, data, steps
  from cfsnn_jax.analysis import energy, spiking_stats
  from cfsnn_jax.data import pipeline

  config_schema.validate_config(config)
  _check_same_run(config, workdir)
  splits = data.load_dataset(config)
  info = splits.info
  setup = steps.create_train_state(config, info, 1)
  eval_graphdef, state, num_params = setup.eval_graphdef, setup.state, setup.num_params
  where = "fresh parameters (no checkpoint)"
  manager = spiking_stats.read_only_checkpoints(workdir)  # a run may still be writing there
  if manager is not None:
    state, step = checkpointing.restore_latest(manager, state, None)
    manager.close()
    if step:
      where = f"checkpoint step {step}"
  model = nnx.merge(eval_graphdef, state["params"], state["rest"])
  batches = pipeline.EvalBatches(splits.test, config.batch_size,
                                 transform=data.eval_transform(config, info))
  report = energy.measure_energy(model, batches, max_batches=num_batches, e_mac_pj=e_mac_pj,
                                 e_ac_pj=e_ac_pj)
  print(f"{config.model.name} on {info.name}, {num_params:,} parameters, {where}, "
        f"workdir={workdir}")
  print(energy.energy_markdown(report))
  json_path, md_path = energy.write_energy(report, workdir)
  print(f"wrote {json_path} and {md_path}")
  return 0


def _check_same_run(config, workdir: str) -> None:
  """A workdir trained with another config (say ``--config.neuron.name=lif``) whose parameters
  happen to fit this one's model would be measured silently as this config's model: refused
  with one line naming the first differing field (the run-only fields may differ, and so may
  ``model.remat``: it changes only the backward pass's memory, never the forward values)."""
  import json

  from cfsnn_jax import run_paths
  from cfsnn_jax import workdir as workdir_lib
  from cfsnn_jax.errors import UserError
  path = run_paths.workdir_path(workdir)
  description = workdir_lib.run_description(config)
  try:
    saved = json.loads((path / workdir_lib.CONFIG_FILE).read_text())
    description["config"]["model"]["remat"] = saved["model"]["remat"]
  except (OSError, ValueError, KeyError, TypeError):
    pass  # no or unreadable config.json: inspect says what is wrong, if anything
  try:
    workdir_lib.inspect(path, description)
  except UserError as e:
    text = str(e).split("; pass a new --workdir")[0]
    raise UserError(f"{text}; pass the --config and overrides that run was trained with"
                    ) from None


def run() -> None:
  from absl import app, flags, logging
  from ml_collections import config_flags

  default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "configs", "default.py")
  config_flag = config_flags.DEFINE_config_file(
      "config", default, "Experiment config file (configs/*.py[:variant]).", lock_config=True)
  workdir = flags.DEFINE_string("workdir", "/tmp/cfsnn_jax", "Run directory: its latest "
                                "checkpoint is used; energy.json / energy.md are written here.")
  num_batches = flags.DEFINE_integer("num_batches", 4, "Test batches to measure rates on.")
  e_mac = flags.DEFINE_float("e_mac", 4.6, "Energy of one MAC in pJ (45 nm).")
  e_ac = flags.DEFINE_float("e_ac", 0.9, "Energy of one accumulate in pJ (45 nm).")

  from cfsnn_jax import data
  from cfsnn_jax.errors import UserError

  def _main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
      sys.exit(main(config_flag.value, workdir.value, num_batches.value, e_mac.value,
                    e_ac.value))
    except (UserError, data.DataError) as e:  # bad input: one line; bugs keep the traceback
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(_main)


if __name__ == "__main__":
  run()
