"""Every bad input is one ``error:`` line: non-zero exit, no traceback, nothing compiled,
nothing written.

The table ``BAD`` holds the cases of issue 12 (misspelt fields, wrong types, model fields
that do not fit the model, broken / missing config files, unknown variants, impossible
numbers, unset data dirs, values that would hang compilation) and the ones that already held
(unknown names, validated numbers). ``schema_range_cases()`` adds, for every field the schema
declares, values just outside its range, NaN / inf for floats, a wrong type and an unknown
name. All go through ``main.parse_and_validate`` (the function the CLI runs before importing
anything heavy) in this process; ``SUBPROCESS`` runs a sample through the real command line.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from cfsnn_jax import main
from cfsnn_jax.config import schema as config_schema
from cfsnn_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (argv after the program name, a regex the one error line must match)
BAD: list[tuple[tuple[str, ...], str]] = [
    # misspelt fields: "did you mean"
    (("--config.neuron.threshhold=1.0",), r"neuron.threshhold; did you mean 'threshold'"),
    (("--config.sed=3",), r"config.sed; did you mean 'seed'"),
    (("--config.optimizer.learning_rte=0.1",), r"did you mean 'learning_rate'"),
    (("--config.nonexistent_field=3",), r"unknown config field in --config.nonexistent_field"),
    (("--config=cifar100:tiny", "--config.model.widht=(8,)",), r"did you mean 'widths'"),
    # wrong types
    (("--config.num_steps=2.5",), r"--config.num_steps=2.5"),
    (("--config.batch_size=sixty",), r"--config.batch_size=sixty"),
    (("--config.progress_bar=maybe",), r"progress_bar"),
    (("--config.optimizer.learning_rate=fast",), r"learning_rate"),
    (("--config.model.hidden=wide",), r"hidden"),
    # model fields that do not fit the model (set on the command line)
    (("--config.model.name=resnet19", "--config.model.hidden=(8,)"),
     r"config.model.hidden does not apply to model 'resnet19'; its fields: stage_blocks"),
    (("--config=cifar10:tiny", "--config.model.name=vggsnn", "--config.model.residual=sew_add"),
     r"config.model.residual does not apply to model 'vggsnn'"),
    (("--config.model.name=resnet1000",), r"unknown model 'resnet1000'; valid choices"),
    (("--config.model.hidden=()",), r"config.model.hidden=\(\): expected a non-empty tuple"),
    (("--config.model.hidden=(0,)",), r"config.model.hidden=\(0,\): expected integers"),
    (("--config.model.hidden=(-4,)",), r"config.model.hidden=\(-4,\): expected integers"),
    (("--config=mnist5k:tiny", "--config.model.channels=(4, 0)"), r"model.channels"),
    (("--config=mnist5k:tiny", "--config.model.hidden=0"), r"model.hidden=0"),
    (("--config=cifar100:tiny", "--config.model.widths=()"), r"model.widths=\(\)"),
    (("--config=cifar100:tiny", "--config.model.residual=dense"),
     r"unknown residual 'dense'; valid choices: standard, sew_add"),
    (("--config=cifar10_spikformer:tiny", "--config.model.attention=linear"),
     r"unknown attention 'linear'"),
    (("--config=cifar10_spikformer:tiny", "--config.model.mlp_ratio=nan"), r"finite"),
    (("--config=cifar10_dvs:tiny", "--config.model.layout=(4, 'Q')"), r"pooling letters"),
    (("--config.model.remat=everything",), r"unknown remat 'everything'; valid choices"),
    # config files
    (("--config=configs/nope.py",), r"no such file 'configs/nope.py'"),
    (("--config=nope",), r"unknown config 'nope'; valid choices: cifar10, cifar100"),
    (("--config=configs",), r"is a directory"),
    (("--config=README.md",), r"not a .py config file"),
    (("--config=@SYNTAX@",), r"line 1: syntax error"),
    (("--config=@RAISES@",), r"failed to load: ZeroDivisionError"),
    (("--config=@NOGETCONFIG@",), r"has no get_config"),
    (("--config=:tiny",), r"expected a config file or name"),
    # variants
    (("--config=configs/default.py:nonexistent",), r"unknown variant of default.py 'nonexistent'"),
    (("--config=default:TINY",), r"unknown variant of default.py 'TINY'; valid choices: tiny"),
    (("--config=cifar100:tnny",), r"unknown variant of cifar100.py 'tnny'"),
    # impossible values
    (("--config.loss.label_smoothing=1.5",), r"label_smoothing=1.5: expected float >= 0 and < 1"),
    (("--config.optimizer.learning_rate=-1",), r"learning_rate=-1.0: expected float > 0"),
    (("--config.num_epochs=0",), r"num_epochs=0"),
    (("--config.num_epochs=-1",), r"num_epochs=-1"),
    (("--config.checkpoint_every_steps=-1",), r"checkpoint_every_steps=-1"),
    (("--config.eval_every_steps=-1",), r"eval_every_steps=-1"),
    (("--config.optimizer.weight_decay=-1",), r"weight_decay=-1.0"),
    (("--config.optimizer.momentum=2",), r"momentum=2.0"),
    (("--config.loss.pn_weight=-1",), r"pn_weight=-1.0"),
    (("--config.optimizer.warmup_steps=-10",), r"warmup_steps=-10"),
    (("--config=default:tiny", "--config.optimizer.warmup_steps=6"),
     r"warmup_steps=6 is not shorter than the run \(num_train_steps=6\)"),
    (("--config.optimizer.grad_clip=-1",), r"grad_clip=-1.0"),
    (("--config.data_workers=-1",), r"data_workers=-1"),
    (("--config.loss.tet_lambda=nan",), r"tet_lambda=nan: expected a finite number"),
    (("--config.loss.tet_phi=inf",), r"tet_phi=inf: expected a finite number"),
    (("--config.log_every_steps=-1",), r"log_every_steps=-1"),
    (("--config.log_every_steps=0",), r"log_every_steps=0"),
    (("--config.keep_checkpoints=0",), r"keep_checkpoints=0"),
    (("--config.num_train_steps=0",), r"num_train_steps=0: expected int -1 or >= 1"),
    (("--config.seed=-3",), r"seed=-3"),
    (("--config.batch_size=0",), r"batch_size=0"),
    # data dirs
    *[((f"--config={name}",), rf"config.data_dir is unset: dataset '{name}'")
      for name in ("tiny_imagenet", "cifar10_dvs", "dvs_gesture", "sst5", "evtouch")],
    (("--config=cifar10:tiny", "--config.data_dir=/nonexistent/cifar"),
     r"data_dir='/nonexistent/cifar': no such directory"),
    # values that would hang compilation
    (("--config.neuron.levels=100000",), r"neuron.levels=100000: expected int >= 1 and <= 64"),
    (("--config.num_steps=100000",), r"num_steps=100000: expected int >= 1 and <= 512"),
    # names and numbers that already failed cleanly
    (("--config.neuron.name=foo",), r"unknown neuron 'foo'; valid choices: if, lif, plif"),
    (("--config.neuron.surrogate=sigmoidal",), r"unknown surrogate 'sigmoidal'"),
    (("--config.neuron.reset=never",), r"unknown reset 'never'"),
    (("--config.neuron.charge=qif",), r"unknown charge 'qif'"),
    (("--config.neuron.surrogate_mode=sometimes",), r"unknown surrogate_mode"),
    (("--config.neuron.threshold_mode=wild",), r"unknown threshold_mode"),
    (("--config.neuron.dynamic_stat=max",), r"unknown dynamic_stat"),
    (("--config.neuron.activation=gelu",), r"unknown activation"),
    (("--config.neuron.threshold=0.0",), r"neuron.threshold=0.0"),
    (("--config.neuron.alpha=-1.0",), r"neuron.alpha=-1.0"),
    (("--config.neuron.tau=0.5",), r"neuron.tau=0.5"),
    (("--config.neuron.name=plif", "--config.neuron.decay_init=1.5"), r"decay_init=1.5"),
    (("--config.neuron.levels=0",), r"neuron.levels=0"),
    (("--config.num_steps=0",), r"num_steps=0"),
    (("--config.dataset=imagenet21k",), r"unknown dataset 'imagenet21k'"),
    (("--config.loss.name=hinge",), r"unknown loss 'hinge'; valid choices: ce, tet"),
    (("--config.loss.pn_variant=median",), r"unknown pn_variant 'median'"),
    (("--config.optimizer.name=lamb",), r"unknown optimizer 'lamb'"),
    (("--config.optimizer.schedule=linear",), r"unknown schedule 'linear'"),
    (("--config.compute_dtype=float16",), r"unknown compute_dtype 'float16'"),
]

_OUT_OF_RANGE = {"int": [], "float": [math.nan, math.inf, -math.inf]}


def _bad_values(f: config_schema.Field) -> list:
  """Values outside ``f``'s declared type and range (as command-line literals)."""
  out = []
  if f.kind in ("int", "float"):
    if f.lo is not None:
      out.append(f.lo if f.lo_open else f.lo - 1)
    if f.hi is not None:
      out.append(f.hi if f.hi_open else f.hi + 1)
    out += _OUT_OF_RANGE[f.kind]
    if f.kind == "int":
      out.append("1.5")  # wrong type
    return [v for v in out if v != f.extra]
  if f.kind == "str" and f.choices:
    return ["not_a_choice"]
  if f.kind == "bool":
    return ["perhaps"]
  return []


def _literal(f, v) -> str:
  if isinstance(v, float) and f.kind == "int":
    v = int(v)
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # nan / inf / -inf are float literals for the flag parser
  return str(v)


# The shipped configs with the model that declares each model field, to range-check it.
_MODEL_CONFIG = {"mlp": "default:tiny", "convnet": "mnist5k:tiny", "resnet19": "cifar100:tiny",
                 "resnet18": "tiny_imagenet:tiny", "vggsnn": "cifar10_dvs:tiny",
                 "spikformer": "cifar10_spikformer:tiny", "text_transformer": "sst2:tiny"}


def schema_range_cases() -> list[tuple[tuple[str, ...], str]]:
  cases = []
  for f in config_schema.FIELDS + config_schema.NEURON_FIELDS:
    for v in _bad_values(f):
      cases.append((("--config=default:tiny", f"--config.{f.path}={_literal(f, v)}"),
                    rf"{f.path.split('.')[-1]}|'{v}'"))
  for model, config in _MODEL_CONFIG.items():
    for f in config_schema.MODEL_FIELDS[model]:
      leaf = f.path.split(".", 1)[1]
      values = _bad_values(f)
      if f.kind in ("ints", "layout"):
        values = ["(0,)", "(-1,)"] + (["()"] if f.nonempty else [])
      for v in values:
        cases.append(((f"--config={config}", f"--config.model.{leaf}={_literal(f, v)}"),
                      rf"{leaf}"))
  return cases


@pytest.fixture(scope="module")
def special_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("configs")
  files = {"@SYNTAX@": "def get_config(:\n  pass\n",
           "@RAISES@": "x = 1 / 0\n\ndef get_config(arg=None):\n  return None\n",
           "@NOGETCONFIG@": "CONFIG = 1\n"}
  paths = {}
  for key, text in files.items():
    p = d / (key.strip("@").lower() + ".py")
    p.write_text(text)
    paths[key] = str(p)
  return paths


def _substitute(argv, special_files):
  out = []
  for a in argv:
    for key, path in special_files.items():
      a = a.replace(key, path)
    out.append(a)
  return out


def _compile_counter():
  import jax
  count = [0]

  def listener(event, *args, **kwargs):
    if "compile" in event:
      count[0] += 1
  jax.monitoring.register_event_duration_secs_listener(listener)
  return count


def test_schema_cases_cover_every_declared_field():
  covered = {a.split("=")[0][len("--config."):] for argv, _ in schema_range_cases() for a in argv
             if a.startswith("--config.")}
  for f in config_schema.FIELDS + config_schema.NEURON_FIELDS:
    if f.kind == "str" and not f.choices:
      continue  # free names (dataset, model / neuron preset, paths): BAD holds their cases
    assert f.path in covered, f.path
  for fields in config_schema.MODEL_FIELDS.values():
    for f in fields:
      assert f.path in covered, f.path


def test_every_bad_input_is_one_line_before_anything_runs(special_files, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  compiles = _compile_counter()
  cases = BAD + schema_range_cases()
  failures = []
  for argv, pattern in cases:
    workdir = tmp_path / "w"
    full = ["main", f"--workdir={workdir}", *_substitute(argv, special_files)]
    before = compiles[0]
    try:
      main.parse_and_validate(full)
      failures.append(f"{argv}: accepted")
      continue
    except UserError as e:
      msg = str(e)
    import re
    if "\n" in msg or not re.search(pattern, msg):
      failures.append(f"{argv}: {msg!r} !~ {pattern!r}")
    if compiles[0] != before or workdir.exists():
      failures.append(f"{argv}: compiled or wrote before failing")
  assert not failures, "\n".join(failures)
  print(f"{len(cases)} bad inputs, each one line")
  assert len(cases) >= 117


# A sample through the real command line: stderr is exactly one ``error:`` line.
SUBPROCESS = [
    ("--config.neuron.threshhold=1.0",),
    ("--config.num_steps=2.5",),
    ("--config=configs/default.py:tnny",),
    ("--config=@SYNTAX@",),
    ("--config=cifar10_dvs",),
    ("--config=default:tiny", "--config.batch_size=6"),  # not divisible by the 4 devices
]


@pytest.mark.parametrize("argv", SUBPROCESS)
def test_command_line_prints_one_error_line(argv, special_files, tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, "-m", "cfsnn_jax.main", f"--workdir={workdir}",
                      *_substitute(argv, special_files)], cwd=REPO, capture_output=True,
                     text=True, timeout=120, env=env)
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert r.returncode == 2, r.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
  assert "Traceback" not in r.stderr + r.stdout
  assert not workdir.exists()


def test_model_field_of_another_model_is_dropped_with_a_note():
  parsed = main.parse_and_validate(["main", "--config=default:tiny",
                                    "--config.model.name=resnet19"])
  assert parsed.notes == ["note: config.model.hidden does not apply to model 'resnet19'; "
                          "dropped"]
  assert "hidden" not in parsed.config.model and parsed.config.model.per_step_bn is False


def test_config_name_resolves_to_the_packaged_file():
  parsed = main.parse_and_validate(["main", "--config=cifar100:tiny", "--config.seed=3"])
  assert parsed.config.dataset == "cifar100" and parsed.config.data_dir == "fixture"
  assert parsed.config.seed == 3


def test_help_lists_every_field():
  text = config_schema.describe()
  for path in config_schema.field_paths():
    assert path in text, path
  r = subprocess.run([sys.executable, "-m", "cfsnn_jax.main", "--help"], cwd=REPO,
                     capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, PYTHONPATH=REPO))
  assert r.returncode == 0
  assert "optimizer.learning_rate (float [> 0]): peak learning rate" in r.stdout
  assert "--workdir" in r.stdout
