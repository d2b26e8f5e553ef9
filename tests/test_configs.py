"""Every experiment config loads, locks and validates (its ``:tiny`` branch trains end to end in
``tests/test_combinations.py``)."""

import glob
import importlib.util
import os

import pytest
from absl import flags
from ml_collections import config_flags

from cfsnn_jax.config import schema as config_schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith("__init__.py"))


def _load(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_expected_configs_exist():
  names = {os.path.basename(p)[:-3] for p in CONFIGS}
  assert {"default", "mnist5k", "cifar10", "cifar100", "cifar10_spikformer", "cifar10_dvs",
          "dvs_gesture", "tiny_imagenet", "sst2", "sst5", "evtouch", "dsatgo_cifar10",
          "dsatgo_cifar100", "dsatgo_cifar10_dvs"} <= names


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_locks_and_validates(path):
  for arg in (None, "tiny"):
    config = _load(path, arg)
    config.lock()
    config_schema.validate_config(config)
    doc = open(os.path.join(REPO, path)).read()
    assert "python -m cfsnn_jax.main" in doc  # the docstring gives the command
  # the real flag parser accepts an override and rejects a typo with "did you mean"
  def parse(*overrides):
    argv = ["x", f"--config={os.path.join(REPO, path)}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config
  assert parse("--config.seed=3").seed == 3
  with pytest.raises(Exception, match="(?i)did you mean"):
    parse("--config.sed=3")

# The :tiny branch of every config trains end to end in tests/test_combinations.py (each
# with a combination of remat, dtype, neuron, data workers and device count).
