"""CLI of the energy estimate: ``python -m cfsnn_jax.analysis.energy --config=X --workdir=DIR``.

It rebuilds the training state of ``--config`` (``steps.create_train_state``, imported inside
``main``: importing this module imports no model code), restores the latest checkpoint of
``--workdir`` if there is one (fresh parameters otherwise,
said on stdout), runs ``--num_batches`` test batches, prints the per-layer table and writes
``energy.json`` + ``energy.md`` into the workdir. Flags are parsed in ``run()`` by
``cfsnn_jax.config.command_line.parse_and_validate`` (a config path or name, ``:tiny``, the
config schema, one ``error:`` line per bad input) on a private flag set, so this module can be imported
next to ``cfsnn_jax.main``.
"""

from __future__ import annotations

import os
import sys


def main(config, workdir: str, num_batches: int, e_mac_pj: float, e_ac_pj: float) -> int:
  from flax import nnx

  from cfsnn_jax import data
  from cfsnn_jax.config import schema as config_schema
  from cfsnn_jax.training import checkpointing, steps
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


def _define_flags(fv) -> None:
  from absl import flags
  flags.DEFINE_integer("num_batches", 4, "Test batches to measure rates on.", flag_values=fv)
  flags.DEFINE_float("e_mac", 4.6, "Energy of one MAC in pJ (45 nm).", flag_values=fv)
  flags.DEFINE_float("e_ac", 0.9, "Energy of one accumulate in pJ (45 nm).", flag_values=fv)


def _check_same_run(config, workdir: str) -> None:
  """A workdir trained with another config (say ``--config.neuron.name=lif``) whose parameters
  happen to fit this one's model would be measured silently as this config's model: refused
  with one line naming the first differing field (the run-only fields may differ, and so may
  ``model.remat``: it changes only the backward pass's memory, never the forward values)."""
  import json

  from cfsnn_jax.training import workdir as workdir_lib
  from cfsnn_jax.errors import UserError
  path = workdir_lib.workdir_path(workdir)
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



def run(argv: list[str] | None = None) -> None:
  """Flags as ``cfsnn_jax.main`` parses them (``--config`` path or name, ``--workdir``) plus
  ``--num_batches``, ``--e_mac``, ``--e_ac``; every bad input is one ``error:`` line."""
  from absl import logging

  from cfsnn_jax.config import command_line as cli
  from cfsnn_jax.errors import UserError

  argv = list(sys.argv if argv is None else argv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(__doc__ + "\nFlags: --config, --workdir (as cfsnn_jax.main), --num_batches=4, "
          "--e_mac=4.6, --e_ac=0.9")
    return
  try:
    parsed = cli.parse_and_validate(argv, define_extra=_define_flags)
    fv = parsed.flag_values
    if fv["num_batches"].value < 1:
      raise UserError(f"--num_batches={fv['num_batches'].value}: expected an integer >= 1")
    for name in ("e_mac", "e_ac"):
      if not fv[name].value > 0:
        raise UserError(f"--{name}={fv[name].value}: expected an energy > 0 (pJ)")
    logging.set_verbosity(logging.WARNING)
    sys.exit(main(parsed.config, parsed.workdir, fv["num_batches"].value, fv["e_mac"].value,
                  fv["e_ac"].value))
  except UserError as e:  # bad input: one clear line; bugs keep the traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
