"""Helpers shared by the data tests: a minimal config for one dataset and the one-line error
check."""

import ml_collections


def make_config(name, data_dir, num_steps=2, **opts):
  c = ml_collections.ConfigDict()
  c.dataset = name
  c.data_dir = str(data_dir)
  c.num_steps = num_steps
  c.seed = 0
  c.data = ml_collections.ConfigDict(opts)
  return c


def one_line_error(excinfo, *fragments):
  msg = str(excinfo.value)
  assert "\n" not in msg, msg
  for f in fragments:
    assert f in msg, (f, msg)
