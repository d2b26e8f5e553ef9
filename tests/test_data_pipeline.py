"""The grain pipeline: determinism, per-epoch reshuffle, disjoint process shards, iterator
state, worker processes; the registry's options and hooks."""

import ml_collections
import numpy as np
import pytest

from cfsnn_jax import data
from cfsnn_jax.data import augment, pipeline, sources


def make_source(n=48):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(n)  # the example id, readable after crop-free augmentation
  return sources.ArraySource(image=images, label=np.arange(n, dtype=np.int32))


AUG = augment.ImageAugment(crop_padding=2, flip=True, autoaugment=True)


def take(it, k):
  return [next(it) for _ in range(k)]


def test_same_seed_same_batches_other_seed_other_batches():
  src = make_source()
  a = take(pipeline.train_iterator(src, 8, seed=3, augment=AUG), 7)
  b = take(pipeline.train_iterator(src, 8, seed=3, augment=AUG, num_threads=1), 7)
  c = take(pipeline.train_iterator(src, 8, seed=4, augment=AUG), 7)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["label"], y["label"])
    np.testing.assert_array_equal(x["image"], y["image"])
  assert a[0]["image"].dtype == np.float32 and a[0]["image"].shape == (8, 8, 8, 3)
  assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))


def test_every_epoch_is_a_permutation_and_reshuffled():
  src = make_source()
  batches = take(pipeline.train_iterator(src, 8, seed=0), 12)  # 2 epochs of 48
  labels = np.concatenate([b["label"] for b in batches])
  e0, e1 = labels[:48], labels[48:]
  assert sorted(e0) == sorted(e1) == list(range(48))
  assert not np.array_equal(e0, e1)


def test_two_processes_get_disjoint_shards_that_form_the_global_batch():
  src = make_source()
  whole = take(pipeline.train_iterator(src, 8, seed=5), 6)
  p0 = take(pipeline.train_iterator(src, 8, seed=5, process_index=0, process_count=2), 6)
  p1 = take(pipeline.train_iterator(src, 8, seed=5, process_index=1, process_count=2), 6)
  seen = []
  for w, a, b in zip(whole, p0, p1):
    assert a["label"].shape == (4,) and not set(a["label"]) & set(b["label"])
    assert sorted(np.concatenate([a["label"], b["label"]])) == sorted(w["label"])
    seen += list(a["label"]) + list(b["label"])
  assert sorted(seen) == list(range(48))  # 6 global batches of 8 = one epoch, covered once


def test_iterator_state_restores_the_position():
  src = make_source()
  it = pipeline.train_iterator(src, 8, seed=1, augment=AUG)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 2)
  fresh = pipeline.train_iterator(src, 8, seed=1, augment=AUG)
  fresh.set_state(state)
  for x, y in zip(take(fresh, 2), expected):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_worker_processes_give_the_same_batches():
  src = make_source()
  threads = take(pipeline.train_iterator(src, 8, seed=2, augment=AUG), 4)
  it = pipeline.train_iterator(src, 8, seed=2, augment=AUG, worker_count=1)
  try:
    procs = take(it, 4)
  finally:
    it.close()
  for x, y in zip(threads, procs):
    np.testing.assert_array_equal(x["image"], y["image"])
  it = pipeline.train_iterator(src, 8, seed=2, augment=AUG, worker_count=1)
  try:
    take(it, 1)
    state = it.get_state()
  finally:
    it.close()
  it = pipeline.train_iterator(src, 8, seed=2, augment=AUG, worker_count=1)
  try:
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["image"], threads[1]["image"])
  finally:
    it.close()


def test_eval_batches_cover_the_split_once_with_mask():
  src = make_source(10)
  batches = list(pipeline.EvalBatches(src, 4, transform=augment.Normalize()))
  assert len(batches) == 3 and all(b["image"].shape == (4, 8, 8, 3) for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[mask > 0]
  assert list(labels) == list(range(10)) and mask.sum() == 10


def test_default_data_config_and_unknown_options():
  for name in data.DATASETS:
    cfg = data.default_data_config(name)
    assert isinstance(cfg, ml_collections.ConfigDict)
  assert data.default_data_config("cifar10_dvs").frame_size == (48, 48)
  assert data.default_data_config("cifar100").autoaugment is True
  c = ml_collections.ConfigDict({"dataset": "sst5", "data_dir": "", "num_steps": 2,
                                 "data": {"max_lenght": 3}})
  with pytest.raises(ValueError, match="unknown config.data.max_lenght.*max_len"):
    data.load_dataset(c)
  with pytest.raises(ValueError, match="valid choices"):
    data.validate_dataset_name("imagenet")


def test_event_hooks():
  info = sources.DatasetInfo("cifar10_dvs", 10, (4, 4, 2), static_input=False)
  c = ml_collections.ConfigDict({"dataset": "cifar10_dvs", "data": {}})
  fn = data.train_augment(c, info)
  x = np.arange(3 * 4 * 4 * 2, dtype=np.float32).reshape(3, 4, 4, 2)
  outs = [fn({"image": x, "label": np.int32(0)}, np.random.default_rng(s))["image"]
          for s in range(10)]
  for o in outs:  # a flip and/or roll of the same frames: the same multiset per frame
    np.testing.assert_array_equal(np.sort(o.reshape(3, -1), 1), np.sort(x.reshape(3, -1), 1))
  assert any(not np.array_equal(o, x) for o in outs)
  assert data.eval_transform(c, info) is None
  c.data = {"flip": False, "max_shift": 0}
  assert data.train_augment(c, info) is None


@pytest.mark.parametrize("name,layout", [
    (n, lay) for n in sorted(data.fixtures.WRITERS)
    for lay in ("auto",) + data.fixtures.FIXTURE_LAYOUTS[n][1:]])
def test_fixture_data_dir_feeds_the_batch_contract(name, layout, tmp_path, monkeypatch):
  """``data_dir = "fixture"``: the real loader on a seeded fixture in the real format (each
  layout the fixture can write), through the hooks and the pipeline, gives the batch
  contract of the dataset's kind."""
  if layout == "aedat4":
    pytest.importorskip("dv_processing")
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  import tempfile
  monkeypatch.setattr(tempfile, "tempdir", None)
  c = ml_collections.ConfigDict({"dataset": name, "data_dir": "fixture", "num_steps": 3,
                                 "seed": 0, "data": data.default_data_config(name)})
  if layout != "auto":
    c.data.layout = layout
  if name in ("cifar10_dvs", "dvs_gesture"):
    c.data.frame_size = (16, 16)
  if layout == "frames":
    c.num_steps = 4  # the SpikingJelly frames fixture holds T = 2 and 4
  splits = data.load_dataset(c)
  assert str(tmp_path) in data.fixtures.materialize(name, layout=layout)[0]
  assert len(splits.train) >= 16 and len(splits.test) >= 8
  it = pipeline.train_iterator(splits.train, 8, 0, augment=data.train_augment(c, splits.info))
  batch = next(it)
  ev = next(iter(pipeline.EvalBatches(splits.test, 8,
                                      transform=data.eval_transform(c, splits.info))))
  info = splits.info
  for b in (batch, ev):
    assert b["label"].dtype == np.int32 and b["label"].shape == (8,)
    assert b["label"].min() >= 0 and b["label"].max() < info.num_classes
    if info.vocab_size:
      assert b["image"].dtype == np.int32 and b["image"].shape == (8,) + info.input_shape
      assert b["image"].max() < info.vocab_size
    elif info.static_input:
      assert b["image"].dtype == np.float32 and b["image"].shape == (8,) + info.input_shape
      assert abs(float(b["image"].mean())) < 3  # normalised, not raw 0..255
    else:
      assert b["image"].dtype == np.float32
      assert b["image"].shape == (8, c.num_steps) + info.input_shape and b["image"].sum() > 0
