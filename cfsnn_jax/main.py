"""Command-line entry point: ``python -m cfsnn_jax.main --config=configs/X.py --workdir=DIR``.

Flags: ``--config`` (an ml_collections config file, locked so a misspelt ``--config.x=``
fails with "did you mean"; default ``configs/default.py``), ``--workdir``, and multi-host
flags (``--coordinator_address``, ``--num_processes``, ``--process_id``; on TPU pods and SLURM
``jax.distributed.initialize()`` finds them itself with ``--distributed``).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "configs", "default.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file (configs/*.py[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory, local or gs://... (config.json, "
                               "metrics.jsonl, TensorBoard events, checkpoints); default: a "
                               "fresh workdirs/<config>-<time> (README: Runs and workdirs).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() "
                                 "(auto-detects TPU pods / SLURM).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for "
                                   "explicit multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax / absl INFO chatter off; progress is ours
  from cfsnn_jax import xla_cpu
  xla_cpu.apply()  # CPU-only XLA flags + allocator, before JAX starts (CFSNN_CPU_TUNING=0: off)
  import jax
  if _COORDINATOR.value is not None:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  from cfsnn_jax import run, run_guard
  from cfsnn_jax.data import DataError
  from cfsnn_jax.errors import UserError
  workdir = _WORKDIR.value
  if workdir is None:  # a fresh directory per run; multi-process runs must share one
    if jax.process_count() > 1:
      print("error: --workdir is required with several processes", file=sys.stderr)
      sys.exit(2)
    file, _, variant = os.path.basename(config_flags.get_config_filename(
        flags.FLAGS["config"])).partition(":")
    workdir = os.path.join("workdirs", "-".join(filter(None, (
        os.path.splitext(file)[0], variant, time.strftime("%Y%m%d-%H%M%S"), str(os.getpid())))))
    print(f"cfsnn_jax: workdir {workdir} (no --workdir given)", flush=True)
  try:
    run.run(_CONFIG.value, workdir)
  except (UserError, DataError) as e:  # bad input: one clear line; bugs keep the traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except run_guard.Interrupted as e:  # SIGTERM / SIGINT: saved; 128 + signal number
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(e.exit_status)


if __name__ == "__main__":
  app.run(main)
