"""The config schema matches the code it describes and stays importable without jax."""

import inspect
import subprocess
import sys

from cfsnn_jax.config import schema as config_schema

_NOT_CONFIG = {"self", "input_shape", "num_classes", "neuron", "static_input", "rngs",
               "vocab_size", "kwargs", "args"}


def _constructor_fields(fn) -> set[str]:
  from cfsnn_jax.models import resnet, vgg
  names = set(inspect.signature(fn.__init__ if inspect.isclass(fn) else fn).parameters)
  if any(p.kind == p.VAR_KEYWORD for p in inspect.signature(
      fn.__init__ if inspect.isclass(fn) else fn).parameters.values()):
    inner = resnet.SpikingResNet if fn.__module__.endswith("resnet") else vgg.SpikingVGG
    names |= set(inspect.signature(inner.__init__).parameters)
  return names - _NOT_CONFIG


def test_model_fields_equal_the_constructors():
  from cfsnn_jax import models
  assert set(config_schema.MODEL_FIELDS) == set(models.MODELS)
  for name, fn in models.MODELS.items():
    declared = {f.path.split(".", 1)[1] for f in config_schema.MODEL_FIELDS[name]}
    assert declared == _constructor_fields(fn), name


def test_choices_equal_the_registries():
  from cfsnn_jax.training import losses
  from cfsnn_jax.neuron import remat
  assert config_schema.REMATS == tuple(remat.REMATS)
  assert config_schema.TASK_LOSSES == tuple(losses.TASK_LOSSES)
  assert config_schema.PN_VARIANTS == tuple(losses.PN_VARIANTS)


def test_base_config_holds_every_declared_field_at_its_default():
  c = config_schema.base_config()
  for f in config_schema.FIELDS:
    assert config_schema._get(c, f.path) == f.default, f.path
  assert set(c.neuron.keys()) == {f.path.split(".")[1] for f in config_schema.NEURON_FIELDS}


def test_import_does_not_import_jax():
  code = ("import sys; import cfsnn_jax.config.schema, cfsnn_jax.main; "
          "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'imported jax'")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr


def test_warmup_longer_than_an_epoch_based_run_is_refused():
  import pytest

  from cfsnn_jax.training import optim
  from cfsnn_jax.errors import UserError
  cfg = config_schema.base_config().optimizer
  cfg.warmup_steps = 880
  with pytest.raises(UserError, match="warmup_steps=880 is not shorter than the run"):
    optim.make_optimizer(cfg, 880)
  cfg.warmup_steps = 10
  optim.make_optimizer(cfg, 880)
