"""Command-line entry point: ``python -m cfsnn_jax.main --config=configs/X.py --workdir=DIR``.

Flags: ``--config`` (an ml_collections config file path, or a shipped config's name such as
``cifar100`` / ``cifar100:tiny`` resolved to ``cfsnn_jax/configs/<name>.py``; locked, so a
misspelt ``--config.x=`` fails with "did you mean"; default: the ``default`` config),
``--workdir``, and multi-host flags (``--coordinator_address``, ``--num_processes``,
``--process_id``; on TPU pods and SLURM ``jax.distributed.initialize()`` finds them itself
with ``--distributed``).

Contract: ``parse_and_validate(argv)`` parses the flags and the config file and validates
the config against ``config_schema`` (jax is imported only by the neuron check at its end);
every user mistake (missing or broken config file, unknown variant, misspelt field, wrong
type, out-of-range value) is a ``UserError``, which the command line prints as one
``error: ...`` line (exit status 2, nothing compiled, nothing written). ``--help`` prints
this text, the config schema (every field's type, range and documentation) and the flags.
Set ``CFSNN_TRACEBACK=1`` to see the traceback of a config-file error instead.
"""


from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.config.command_line import (Parsed, one_line, define_flags, parse_and_validate,
                                    resolve_config_path, shipped_configs)
from cfsnn_jax.errors import UserError

__all__ = ["Parsed", "define_flags", "main", "parse_and_validate", "resolve_config_path",
           "shipped_configs"]
__doc__ += "\n" + config_schema.describe()

define_flags(flags.FLAGS, argv=sys.argv[:1])  # for --help; parse_and_validate parses argv

_PARSED: list[Parsed] = []


def _flags_parser(argv: list[str]) -> list[str]:
  if any(a in ("--help", "-h", "--helpfull", "--helpshort", "-?") for a in argv[1:]):
    flags_help = flags.FLAGS.module_help(sys.modules["cfsnn_jax.config.command_line"])
    print(__doc__ + "\nFlags:\n" + flags_help)
    sys.exit(0)
  try:
    _PARSED.append(parse_and_validate(argv))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  flags.FLAGS.mark_as_parsed()  # absl's own flags keep their defaults
  return [argv[0]]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax / absl INFO chatter off; progress is ours
  parsed = _PARSED[-1]
  for note in parsed.notes:
    print(note, file=sys.stderr)
  from cfsnn_jax.backends import xla_cpu
  xla_cpu.apply()  # CPU-only XLA flags + allocator, before JAX starts (CFSNN_CPU_TUNING=0: off)
  import jax
  if parsed.coordinator_address is not None:
    jax.distributed.initialize(parsed.coordinator_address, parsed.num_processes,
                               parsed.process_id)
  elif parsed.distributed:
    jax.distributed.initialize()
  from cfsnn_jax import run
  from cfsnn_jax.training import guard as run_guard
  from cfsnn_jax.data import pipeline
  workdir = parsed.workdir
  if workdir is None:  # a fresh directory per run; multi-process runs must share one
    if jax.process_count() > 1:
      print("error: --workdir is required with several processes", file=sys.stderr)
      sys.exit(2)
    workdir = os.path.join("workdirs", f"{parsed.config_name}-"
                           f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    print(f"cfsnn_jax: workdir {workdir} (no --workdir given)", flush=True)
  try:  # device-dependent checks, still before anything is written or compiled
    pipeline.check_batch_size(parsed.config.batch_size, jax.process_count(), jax.device_count())
    run.run(parsed.config, workdir)
  except UserError as e:  # bad input (data errors included): one line; bugs keep the traceback
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except run_guard.Interrupted as e:  # SIGTERM / SIGINT: saved; 128 + signal number
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(e.exit_status)


if __name__ == "__main__":
  app.run(main, flags_parser=_flags_parser)
