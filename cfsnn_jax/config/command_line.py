"""Parsing and validating a command line of ``cfsnn_jax.main`` (also used by the energy CLI
and the sweep launcher), without importing jax.

Contract: ``parse_and_validate(argv)`` parses the flags (``--config`` as a file path or a
shipped config's name such as ``cifar100`` / ``cifar100:tiny`` resolved to
``cfsnn_jax/configs/<name>.py``, ``--workdir``, the multi-host flags) and the config file, and
validates the config against ``config_schema``; every user mistake (missing or broken config
file, unknown variant, misspelt field, wrong type, out-of-range value) is a ``UserError``
(one line). It returns a ``Parsed`` record. ``define_flags(fv)`` defines these flags on a
flag set. Set ``CFSNN_TRACEBACK=1`` to see the traceback of a config-file error instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
from typing import Any, Callable, Sequence

from absl import flags
from ml_collections import config_flags

from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.errors import UserError, unknown_choice

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
_DEFAULT_CONFIG = os.path.join(CONFIGS_DIR, "default.py")
DEFAULT_VARIANTS = ("tiny",)  # a config file's ``VARIANTS`` replaces this list



def define_flags(fv: flags.FlagValues, argv: Sequence[str] | None = None) -> None:
  """Defines this program's flags on ``fv``; ``argv``: where ``--config.x`` overrides are
  read from (``sys.argv`` when None)."""
  config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG, "Experiment config: a file (configs/X.py[:variant]) or a "
      "shipped config name (cifar100[:tiny]). Fields: see the module help above.",
      flag_values=fv, lock_config=True, sys_argv=None if argv is None else list(argv))
  flags.DEFINE_string("workdir", None, "Output directory, local or gs://... (config.json, "
                      "metrics.jsonl, TensorBoard events, checkpoints); default: a fresh "
                      "workdirs/<config>-<time> (README: Runs and workdirs).", flag_values=fv)
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detects "
                    "TPU pods / SLURM).", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for explicit "
                      "multi-process runs.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Number of processes.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index.", flag_values=fv)


@dataclasses.dataclass
class Parsed:
  config: Any
  workdir: str | None
  distributed: bool
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  notes: list[str]
  flag_values: Any = None
  config_name: str = "default"  # the config file's name and variant, for a default workdir


def shipped_configs() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(CONFIGS_DIR)
                if f.endswith(".py") and not f.startswith("_"))


def resolve_config_path(value: str) -> tuple[str, str | None]:
  """``(file, variant)`` for a ``--config`` value: a path, or a shipped config name."""
  path, sep, variant = value.partition(":")
  variant = variant if sep and variant else None
  if not path:
    raise UserError(f"--config={value!r}: expected a config file or name")
  if not os.path.exists(path) and re.fullmatch(r"[A-Za-z0-9_]+", path):
    named = os.path.join(CONFIGS_DIR, path + ".py")
    if not os.path.isfile(named):
      raise unknown_choice("config", path, shipped_configs())
    path = named
  if not os.path.exists(path):
    raise UserError(f"--config={value!r}: no such file {path!r} (shipped config names: "
                    f"{', '.join(shipped_configs())})")
  if os.path.isdir(path):
    raise UserError(f"--config={value!r}: {path!r} is a directory, expected a configs/*.py file")
  if not path.endswith(".py"):
    raise UserError(f"--config={value!r}: {path!r} is not a .py config file")
  return path, variant


def _load_module(path: str):
  spec = importlib.util.spec_from_file_location("_cfsnn_config_check", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"--config file {path!r} line {e.lineno}: syntax error: {e.msg}") from e
  except Exception as e:  # the user's file failed to import
    raise UserError(f"--config file {path!r} failed to load: {type(e).__name__}: "
                    f"{one_line(e)}") from e
  if not callable(getattr(module, "get_config", None)):
    raise UserError(f"--config file {path!r} has no get_config(arg=None) function")
  return module


def check_variant(path: str, variant: str | None, module: Any) -> None:
  allowed = tuple(getattr(module, "VARIANTS", DEFAULT_VARIANTS))
  if variant is not None and variant not in allowed:
    raise unknown_choice(f"variant of {os.path.basename(path)}", variant, allowed)


def one_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  return lines[-1] if lines else type(e).__name__


def _normalize_argv(argv: Sequence[str]) -> list[str]:
  """``--config VALUE`` becomes ``--config=VALUE``."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] == "--config" and i + 1 < len(argv):
      out.append("--config=" + argv[i + 1])
      i += 2
    else:
      out.append(argv[i])
      i += 1
  return out


def overridden_fields(argv: Sequence[str]) -> list[str]:
  """Field paths set on the command line (``--config.model.hidden=...`` -> ``model.hidden``)."""
  return [m.group(1) for m in (re.match(r"--config\.([\w.]+)", a) for a in argv) if m]


def _flag_error_line(e: BaseException) -> str:
  text = str(e)
  did_you_mean = re.search(r"[Dd]id you mean[^\n]*", text)
  first = one_line(e) if "Error whilst parsing" in text else text.strip().splitlines()[0]
  if did_you_mean and did_you_mean.group(0) not in first:
    first = f"{first.rstrip('.')}; {did_you_mean.group(0)}"
  return first


def _fresh_config(module: Any, variant: str | None) -> Any:
  try:
    return module.get_config(variant) if variant else module.get_config()
  except Exception:  # only used for a "did you mean" hint
    return None


def _unknown_field_line(e: BaseException, argv: Sequence[str], config: Any = None) -> str:
  text = str(e)
  name = re.search(r"[A-Za-z_]\w*", text)
  name = name.group(0) if name else ""
  paths = [p for p in overridden_fields(argv) if p.split(".")[-1] == name or
           f".{name}." in f".{p}."]
  where = f"--config.{paths[-1]}" if paths else f"field {name!r}"
  hint = re.search(r'Did you mean "(\w+)"', text)
  if not hint and paths and config is not None:
    *parent, leaf = paths[-1].split(".")
    try:
      keys = list(config_schema._get(config, ".".join(parent)).keys()) if parent else list(
          config.keys())
    except (KeyError, AttributeError):
      keys = []
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = re.search(r"(\w+)", f'"{close[0]}"') if close else None
  hint = f"; did you mean {hint.group(1)!r}?" if hint else "; the fields are listed by --help"
  return f"unknown config field in {where}{hint}"


def parse_and_validate(argv: Sequence[str], *, check_paths: bool = True,
                       define_extra: Callable[[flags.FlagValues], None] | None = None
                       ) -> Parsed:
  """Parses ``argv`` (``argv[0]`` is the program) and validates the config; jax-free.

  ``check_paths=False`` skips the data-directory checks (a launcher checking commands that
  run on other machines). ``define_extra(fv)`` defines a program's own additional flags
  (their values: ``Parsed.flag_values``).
  Raises ``UserError`` (one line) for every mistake in the flags or the config."""
  argv = _normalize_argv(argv)
  at = [i for i, a in enumerate(argv) if i > 0 and a.startswith("--config=")]
  value = argv[at[-1]].split("=", 1)[1] if at else _DEFAULT_CONFIG
  path, variant = resolve_config_path(value)
  module = _load_module(path)
  check_variant(path, variant, module)
  if at:
    argv[at[-1]] = "--config=" + path + (f":{variant}" if variant else "")
  try:
    fv = flags.FlagValues()
    define_flags(fv, argv)
    if define_extra is not None:
      define_extra(fv)
    fv(argv)
    config = fv["config"].value
    if config is None:
      raise UserError(f"--config file {path!r}: get_config() returned None")
    workdir = fv["workdir"].value
  except UserError:
    raise
  except flags.Error as e:
    if os.environ.get("CFSNN_TRACEBACK"):
      raise
    raise UserError(_flag_error_line(e)) from e
  except Exception as e:  # loading / overriding the user's config: their input
    if os.environ.get("CFSNN_TRACEBACK"):
      raise
    if isinstance(e, (AttributeError, KeyError)):
      raise UserError(_unknown_field_line(e, argv, _fresh_config(module, variant))) from e
    raise UserError(f"--config {value!r}: {type(e).__name__}: {_flag_error_line(e)}") from e
  notes = config_schema.fit_model_fields(config, overridden_fields(argv))
  config_schema.validate_config(config, require_data_dir=check_paths)
  name = "-".join(filter(None, (os.path.splitext(os.path.basename(path))[0], variant)))
  return Parsed(config, workdir, fv["distributed"].value, fv["coordinator_address"].value,
                fv["num_processes"].value, fv["process_id"].value, notes, fv, name)
