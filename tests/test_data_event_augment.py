"""Event augmentation on the CPU workers: frame flip / translation (circular or zero padded) /
temporal roll against hand-computed arrays; refractory and denoise filters against
straightforward per-event loops of their stated rules; time jitter; the events mode of the
sources through the grain pipeline; the named recipes of the DVS configs."""

import ml_collections
import numpy as np
import pytest

from cfsnn_jax import data, errors
from cfsnn_jax.configs import cifar10_dvs as cifar10_dvs_config
from cfsnn_jax.configs import dsatgo_cifar10_dvs as dsatgo_config
from cfsnn_jax.configs import dvs_gesture as dvs_gesture_config
from cfsnn_jax.data import augment, event_filters, events, pipeline
from data_test_helpers import make_config


def frames(t=2, h=3, w=4):
  return np.arange(t * h * w * 2, dtype=np.float32).reshape(t, h, w, 2)


class FixedRng:
  """Stands in for np.random.Generator with scripted draws."""

  def __init__(self, random=(), integers=()):
    self._random = list(random)
    self._integers = list(integers)

  def random(self):
    return self._random.pop(0)

  def integers(self, lo, hi, size=None):
    v = self._integers.pop(0)
    return np.asarray(v) if size is not None else v


def test_shift_with_zeros_is_a_crop_of_the_zero_padded_frames():
  x = frames()
  out = augment.shift_with_zeros(x, 1, -2)  # out[:, y, x] = in[:, y - 1, x + 2]
  expected = np.zeros_like(x)
  expected[:, 1:, :2] = x[:, :2, 2:]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(augment.shift_with_zeros(x, 0, 0), x)
  assert augment.shift_with_zeros(x, 3, 0).sum() == 0


def test_event_augment_flip_translate_and_time_roll_in_order():
  x = frames(t=3)
  aug = augment.EventAugment(flip=True, max_shift=2, translate="pad", time_roll=1)
  out = aug.frames(x, FixedRng(random=[0.2], integers=[[1, -2], 1]))  # flip, shift, roll
  expected = np.roll(augment.shift_with_zeros(x[:, :, ::-1], 1, -2), 1, axis=0)
  np.testing.assert_array_equal(out, expected)
  roll = augment.EventAugment(flip=False, max_shift=2, translate="roll")
  np.testing.assert_array_equal(roll.frames(x, FixedRng(integers=[[-1, 2]])),
                                np.roll(x, (-1, 2), axis=(1, 2)))
  none = augment.EventAugment(flip=True, max_shift=0)
  np.testing.assert_array_equal(none.frames(x, FixedRng(random=[0.7])), x)  # p >= 0.5: keep
  with pytest.raises(errors.UserError, match="valid choices: roll, pad"):
    augment.EventAugment(translate="wrap")
  with pytest.raises(errors.UserError, match=">= 0"):
    augment.EventAugment(time_roll=-1)


def test_event_augment_is_seeded_per_example_and_varies():
  x = frames(t=4, h=8, w=8)
  aug = augment.EventAugment(flip=True, max_shift=3, translate="pad", time_roll=2)
  a = [aug({"image": x, "label": np.int32(1)}, np.random.default_rng(s))["image"]
       for s in range(8)]
  b = [aug({"image": x, "label": np.int32(1)}, np.random.default_rng(s))["image"]
       for s in range(8)]
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert len({u.tobytes() for u in a}) > 1
  assert all(u.sum() <= x.sum() for u in a)  # zero padding only removes counts


def random_events(rng, n, sensor=(6, 5), t_max=400):
  return events.Events(np.sort(rng.integers(0, t_max, n)), rng.integers(0, sensor[1], n),
                       rng.integers(0, sensor[0], n), rng.integers(0, 2, n))


def loop_refractory(ev, period):
  last, keep = {}, []
  for i in range(len(ev)):
    pix = (int(ev.x[i]), int(ev.y[i]))
    keep.append(pix not in last or ev.t[i] - last[pix] > period)
    last[pix] = ev.t[i]  # every event, kept or dropped, restarts the period
  return np.asarray(keep)


def loop_denoise(ev, window, sensor):
  last, keep = {}, []
  for i in range(len(ev)):
    x, y, t = int(ev.x[i]), int(ev.y[i]), int(ev.t[i])
    ok = False
    for nx, ny in ((x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)):
      if 0 <= nx < sensor[1] and 0 <= ny < sensor[0] and (nx, ny) in last:
        ok |= t - last[(nx, ny)] < window
    keep.append(ok)
    last[(x, y)] = t
  return np.asarray(keep)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refractory_and_denoise_match_their_per_event_rules(seed):
  rng = np.random.default_rng(seed)
  ev = random_events(rng, 300)
  sensor = (6, 5)
  for period in (0, 10, 60):
    got = event_filters.refractory(ev, period, sensor)
    want = ev.select(loop_refractory(ev, period)) if period else ev
    np.testing.assert_array_equal(got.t, want.t)
    np.testing.assert_array_equal(got.x, want.x)
    np.testing.assert_array_equal(got.y, want.y)
  for window in (5, 40):
    keep = loop_denoise(ev, window, sensor)
    got = event_filters.denoise(ev, window, sensor)
    assert 0 < keep.sum() < len(ev)
    np.testing.assert_array_equal(got.t, ev.t[keep])
    np.testing.assert_array_equal(got.x, ev.x[keep])


def test_denoise_drops_an_isolated_event_and_keeps_a_supported_one():
  ev = events.Events(np.array([0, 5, 100]), np.array([2, 3, 0]), np.array([2, 2, 0]),
                     np.array([1, 1, 0]))
  got = event_filters.denoise(ev, 10, (4, 4))
  np.testing.assert_array_equal(got.t, [5])  # (3,2) after its neighbour (2,2) at t=0


def test_time_jitter_keeps_the_events_and_sorts_them():
  rng = np.random.default_rng(0)
  ev = random_events(rng, 2000, t_max=10**6)
  out = event_filters.time_jitter(ev, 1000.0, np.random.default_rng(5))
  again = event_filters.time_jitter(ev, 1000.0, np.random.default_rng(5))
  np.testing.assert_array_equal(out.t, again.t)
  assert np.all(np.diff(out.t) >= 0) and len(out) == len(ev)
  key = lambda e: sorted(zip(e.x.tolist(), e.y.tolist(), e.p.tolist()))  # noqa: E731
  assert key(out) == key(ev)
  shift = np.sort(out.t).astype(float).mean() - ev.t.astype(float).mean()
  assert abs(shift) < 100  # zero-mean (std 1000 / sqrt(2000) = 22)
  assert event_filters.time_jitter(ev, 0, rng) is ev


def test_time_jitter_bins_events_per_example_through_the_pipeline():
  cfg = make_config("cifar10_dvs", "fixture", num_steps=4, frame_size=(16, 16),
                    time_jitter_us=5000, refractory_us=100, cache=False)
  splits = data.load_dataset(cfg)
  ex = splits.train[0]
  assert set(ex) == {"t", "x", "y", "p", "label"} and len(ex["t"]) > 1000
  assert "image" in splits.test[0]  # evaluation stays deterministic frames
  fn = data.train_augment(cfg, splits.info)
  assert fn.time_jitter_us == 5000 and fn.spec == splits.info.frame_spec
  out = fn(ex, np.random.default_rng(0))["image"]
  assert out.shape == (4, 16, 16, 2) and out.dtype == np.float32
  assert abs(float(out.sum()) - float(splits.test[0]["image"].sum())) < 0.2 * out.sum()
  batch = next(pipeline.train_iterator(splits.train, 8, 0, augment=fn))
  assert batch["image"].shape == (8, 4, 16, 16, 2) and set(batch) == {"image", "label"}
  frames_cfg = make_config("cifar10_dvs", "fixture", num_steps=4, layout="frames",
                           time_jitter_us=5000)
  with pytest.raises(errors.UserError, match="pre-binned frames; data.time_jitter_us"):
    data.load_dataset(frames_cfg)


def test_named_recipes_and_the_dvs_configs_use_them():
  assert data.event_augment_recipe("tet") == {"flip": True, "max_shift": 5,
                                              "translate": "roll", "time_roll": 0,
                                              "time_jitter_us": 0}
  assert data.event_augment_recipe("tet_noflip")["flip"] is False
  with pytest.raises(errors.UserError, match="valid choices: none, tet, tet_noflip"):
    data.event_augment_recipe("nda")
  for module, flip in ((cifar10_dvs_config, True), (dsatgo_config, True),
                       (dvs_gesture_config, False)):
    c = module.get_config()
    assert (c.data.flip, c.data.max_shift, c.data.translate) == (flip, 5, "roll")
  c = ml_collections.ConfigDict({"dataset": "dvs_gesture",
                                 "data": dvs_gesture_config.get_config().data})
  info = data.sources.DatasetInfo("dvs_gesture", 11, (4, 4, 2), static_input=False)
  fn = data.train_augment(c, info)
  assert isinstance(fn, augment.EventAugment) and not fn.flip and fn.max_shift == 5
