"""Every on-disk layout researchers hold, read by naming the dataset: AEDAT 2.0 / AEDAT4
(written by iniVation's dv-processing) / SpikingJelly events_np and frames / tonic for
CIFAR10-DVS and DVS128 Gesture, the TactileSGNet EvTouch release, Tiny-ImageNet's val in
class folders. One recording in every layout gives the same frames; layout detection and
its override; content-keyed frame caches (no collisions, invalidation)."""

import hashlib
import os
import shutil
import sys
import time

import numpy as np
import pytest

from cfsnn_jax import data, errors
from cfsnn_jax.training import loop as train
from cfsnn_jax.configs import cifar10_dvs as cifar10_dvs_config
from cfsnn_jax.configs import evtouch as evtouch_config
from cfsnn_jax.data import events, evtouch, fixtures, spikingjelly_layout
from data_test_helpers import make_config, one_line_error


def fixture_dir(name, layout):
  if layout == "aedat4":
    pytest.importorskip("dv_processing")  # the independent AEDAT4 writer (test extra)
    pytest.importorskip("aedat")
  return fixtures.materialize(name, layout=layout)


def digest(frames):
  return hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest()


def labelled_frames(name, layout, num_steps=4, **opts):
  """``{split: sorted [(label, frames digest)]}`` and one split's frames in order."""
  directory, overrides = fixture_dir(name, layout)
  cfg = make_config(name, directory, num_steps=num_steps, cache=False, layout=layout,
                    **{**overrides, **opts})
  splits = data.load_dataset(cfg)
  out, ordered = {}, []
  for split, source in (("train", splits.train), ("test", splits.test)):
    pairs = []
    for i in range(len(source)):
      ex = source[i]
      assert ex["image"].dtype == np.float32
      pairs.append((int(ex["label"]), digest(ex["image"])))
      if split == "train" and i < 3:
        ordered.append(ex["image"])
    out[split] = sorted(pairs)
  return out, ordered, splits


@pytest.mark.parametrize("name,layouts", [
    ("cifar10_dvs", ("aedat", "aedat4", "events_np", "frames")),
    ("dvs_gesture", ("aedat", "tonic", "events_np", "frames"))])
def test_one_recording_gives_the_same_frames_in_every_layout(name, layouts):
  """The fixture writes the same seeded recordings in each layout (AEDAT4 by dv-processing
  with the DV converter's mapping; SpikingJelly frames by SpikingJelly's formula)."""
  ref, ref_frames, splits = labelled_frames(name, layouts[0], frame_size=(128, 128))
  assert sum(f.sum() for f in ref_frames) > 0
  assert len({d for _, d in ref["train"]}) == len(ref["train"])  # distinct recordings
  for layout in layouts[1:]:
    got, got_frames, got_splits = labelled_frames(name, layout, frame_size=(128, 128))
    assert got == ref, layout
    if name == "cifar10_dvs":  # same order too (our split, by recording number)
      for a, b in zip(ref_frames, got_frames):
        np.testing.assert_array_equal(a, b)
    got_files = {p for p, _ in got_splits.files}  # this layout's own files were read
    assert got_files and not got_files & {p for p, _ in splits.files}


def test_aedat4_mapping_is_the_transpose_of_the_dv_image(tmp_path):
  """A single event written by dv-processing at DV (x4, y4) lands at our (y = x4, x = y4)."""
  pytest.importorskip("dv_processing")
  pytest.importorskip("aedat")
  from cfsnn_jax.data import aedat4, cifar10_dvs
  path = str(tmp_path / "one.aedat4")
  fixtures.write_aedat4(path, [3, 100], [90, 7], [1, 0], [10, 20])
  ev = aedat4.read_aedat4(path)
  np.testing.assert_array_equal(ev.x, [3, 100])  # as stored
  ours = cifar10_dvs.read_events("aedat4", path)
  np.testing.assert_array_equal(ours.x, [90, 7])
  np.testing.assert_array_equal(ours.y, [3, 100])
  np.testing.assert_array_equal(ours.p, [1, 0])
  np.testing.assert_array_equal(ours.t, [10, 20])


def test_missing_aedat4_decoder_is_one_line_naming_the_extra(monkeypatch):
  directory, overrides = fixture_dir("cifar10_dvs", "aedat4")
  monkeypatch.setitem(sys.modules, "aedat", None)  # import aedat -> ImportError
  with pytest.raises(errors.UserError) as e:
    data.load_dataset(make_config("cifar10_dvs", directory, **overrides))
  one_line_error(e, "pip install 'cfsnn_jax[aedat4]'", "AEDAT4")


@pytest.mark.parametrize("name,layout", [
    (n, lay) for n, lays in sorted(fixtures.FIXTURE_LAYOUTS.items()) for lay in lays
    if n in ("cifar10_dvs", "dvs_gesture", "evtouch", "tiny_imagenet")])
def test_layout_is_detected_automatically(name, layout):
  directory, overrides = fixture_dir(name, layout)
  kw = {} if name == "tiny_imagenet" else {"cache": False}
  splits = data.load_dataset(make_config(name, directory, **overrides, **kw))
  assert len(splits.train) >= 16 and len(splits.test) >= 8
  if name == "tiny_imagenet":
    last = splits.files[-1][0]  # a validation image
    assert (os.path.join("val", "images", "") in last) == (layout == "original")
  else:
    assert splits.train.samples[0].group[0] == layout


def test_explicit_layout_overrides_detection_and_bad_names_fail(tmp_path):
  directory, overrides = fixtures.materialize("cifar10_dvs", layout="events_np")
  mixed = tmp_path / "sj"
  shutil.copytree(directory, mixed)
  frames_dir, _ = fixtures.materialize("cifar10_dvs", layout="frames")
  for n in os.listdir(frames_dir):
    if n.startswith("frames_number_"):
      shutil.copytree(os.path.join(frames_dir, n), mixed / n)
  cfg = make_config("cifar10_dvs", mixed, num_steps=4, cache=False, **overrides)
  assert data.load_dataset(cfg).train.samples[0].group[0] == "events_np"  # events first
  cfg.data.layout = "frames"
  assert data.load_dataset(cfg).train.samples[0].group[0] == "frames"
  cfg.num_steps = 3  # no frames_number_3_*: one line listing what is there
  with pytest.raises(data.DataError) as e:
    data.load_dataset(cfg)
  one_line_error(e, "frames_number_3_split_by_number", "frames_number_2_split_by_number",
                 "frames_number_4_split_by_number")
  cfg.num_steps = 4
  cfg.data.denoise_us = 1000  # pre-binned frames cannot be filtered
  with pytest.raises(errors.UserError) as e:
    data.load_dataset(cfg)
  one_line_error(e, "pre-binned frames", "data.denoise_us")
  cfg.data.denoise_us = 0
  cfg.data.layout = "aedat"
  with pytest.raises(data.DataError) as e:
    data.load_dataset(cfg)
  one_line_error(e, "no CIFAR10-DVS aedat found", "cifar10_<class>_<n>.aedat")
  cfg.data.layout = "tonic"
  with pytest.raises(errors.UserError) as e:
    data.load_dataset(cfg)
  one_line_error(e, "unknown data.layout for cifar10_dvs 'tonic'", "aedat4, events_np")


def test_spikingjelly_gesture_label_is_the_folder_number(tmp_path):
  """SpikingJelly's own DatasetFolder would give folder '10' label 2 (sorted strings)."""
  for split in ("train", "test"):
    for label in (2, 10):
      folder = tmp_path / "events_np" / split / str(label)
      folder.mkdir(parents=True)
      np.savez(folder / "user01_led_0.npz", t=np.arange(4), x=np.full(4, label),
               y=np.zeros(4, int), p=np.ones(4, int))
  splits = data.load_dataset(make_config("dvs_gesture", tmp_path, cache=False))
  labels = [int(splits.train[i]["label"]) for i in range(len(splits.train))]
  assert labels == [2, 10]
  for i, lab in enumerate(labels):  # the sample in folder <lab> has its events at x = lab
    assert splits.train[i]["image"][:, 0, lab, 1].sum() == 4
  (tmp_path / "events_np" / "train" / "11").mkdir()
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("dvs_gesture", tmp_path, cache=False))
  one_line_error(e, "unknown label folder '11'", "0..10")


def test_tonic_gesture_reads_ms_columns_and_rejects_bad_labels(tmp_path):
  folder = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_led"
  folder.mkdir(parents=True)
  # x, y, p, t (ms); stored out of order in time: read sorted (stable)
  np.save(folder / "4.npy", np.array([[1, 2, 1, 5], [3, 4, 0, 2], [5, 6, 1, 5]]))
  test = tmp_path / "DVSGesture" / "ibmGestureTest" / "user24_led"
  test.mkdir(parents=True)
  np.save(test / "0.npy", np.array([[0, 0, 1, 1]]))
  from cfsnn_jax.data import dvs_gesture
  ev = dvs_gesture.read_tonic(str(folder / "4.npy"))
  np.testing.assert_array_equal(ev.t, [2000, 5000, 5000])
  np.testing.assert_array_equal(ev.x, [3, 1, 5])
  splits = data.load_dataset(make_config("dvs_gesture", tmp_path, cache=False, num_steps=1))
  assert int(splits.train[0]["label"]) == 4 and splits.train[0]["image"].sum() == 3
  np.save(folder / "11.npy", np.array([[0, 0, 1, 1]]))
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("dvs_gesture", tmp_path))
  one_line_error(e, "11.npy", "unknown label '11'", "0..10")


def test_tactilesgnet_bins_map_onto_frames_by_time():
  bins = np.zeros((3, 2, 10), np.float32)
  bins[0, 1, [0, 2, 3, 9]] = 1
  bins[2, 0, 5] = 1
  f = evtouch.bins_to_frames(bins, 4, "x.npy")  # edges floor(j * 10 / 4) = 0, 2, 5, 7, 10
  assert f.shape == (4, 3, 1, 2)
  np.testing.assert_array_equal(f[:, 0, 0, 1], [1, 2, 0, 1])
  np.testing.assert_array_equal(f[:, 2, 0, 0], [0, 0, 1, 0])
  np.testing.assert_array_equal(evtouch.bins_to_frames(bins, 10, "x")[:, 0, 0, 1],
                                bins[0, 1])
  with pytest.raises(data.DataError, match="10 time bins cannot fill T = 11"):
    evtouch.bins_to_frames(bins, 11, "x.npy")


def test_tactilesgnet_release_same_names_in_both_splits_never_share_a_cache_entry(tmp_path):
  directory, _ = fixtures.materialize("evtouch", layout="tactilesgnet")
  train_names = set(os.listdir(os.path.join(directory, "Ev-Objects", "train")))
  test_names = set(os.listdir(os.path.join(directory, "Ev-Objects", "test")))
  shared = train_names & test_names
  assert shared  # the sample index restarts per folder, as in the release
  cfg = make_config("evtouch", directory, num_steps=5, cache_dir=str(tmp_path / "c"))
  splits = data.load_dataset(cfg)
  assert splits.info.num_classes == 4
  for _ in range(2):  # second pass from the cache
    for src, split in ((splits.train, "train"), (splits.test, "test")):
      for i in range(len(src)):
        s = src.samples[i]
        raw = np.load(s.name)
        want = evtouch.bins_to_frames(raw, 5, s.name)
        np.testing.assert_array_equal(src[i]["image"], want)
        assert os.sep + split + os.sep in s.name
  keys = [s.key for s in splits.train.samples + splits.test.samples]
  assert len(set(keys)) == len(keys)


def test_tiny_imagenet_val_folders_with_and_without_images_and_annotations(tmp_path):
  directory, _ = fixtures.materialize("tiny_imagenet", layout="original")
  ref = data.load_dataset(make_config("tiny_imagenet", directory))
  root = tmp_path / "tiny-imagenet-200"
  shutil.copytree(os.path.join(directory, "tiny-imagenet-200"), root)
  ann = (root / "val" / "val_annotations.txt").read_text().splitlines()
  for line in ann:  # re-organise: val/<wnid>/<file> (no images/ level), annotations kept
    f, wnid = line.split("\t")[:2]
    (root / "val" / wnid).mkdir(exist_ok=True)
    shutil.move(str(root / "val" / "images" / f), str(root / "val" / wnid / f))
  (root / "val" / "images").rmdir()
  splits = data.load_dataset(make_config("tiny_imagenet", tmp_path))
  got = sorted((int(splits.test[i]["label"]), digest(splits.test[i]["image"]))
               for i in range(len(splits.test)))
  want = sorted((int(ref.test[i]["label"]), digest(ref.test[i]["image"]))
                for i in range(len(ref.test)))
  assert got == want and len(got) == 8
  wnid0, wnid1 = ann[0].split("\t")[1], ann[1].split("\t")[1]
  f0 = ann[0].split("\t")[0]
  shutil.move(str(root / "val" / wnid0 / f0), str(root / "val" / wnid1 / f0))  # mis-sorted
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("tiny_imagenet", tmp_path))
  one_line_error(e, f0, "val_annotations.txt says " + wnid0)
  os.remove(root / "val" / "val_annotations.txt")  # without annotations: the folder decides
  assert len(data.load_dataset(make_config("tiny_imagenet", tmp_path)).test) == 8


# ---------------------------------------------------------------- content-keyed caches

def write_index(root, rows):
  (root / "samples.csv").write_text("file,label,split\n" + "".join(
      f"{f},{lab},{split}\n" for f, lab, split in rows))


def test_evtouch_cache_keys_do_not_collide(tmp_path):
  (tmp_path / "a").mkdir()
  np.savez(tmp_path / "s1.npz", t=np.arange(3), taxel=np.array([1, 1, 1]), p=np.ones(3, int))
  (tmp_path / "s1.csv").write_text("t,taxel,p\n1,5,0\n2,5,0\n")
  np.savez(tmp_path / "a" / "b.npz", t=np.arange(2), taxel=np.array([7, 7]),
           p=np.zeros(2, int))
  np.savez(tmp_path / "a__b.npz", t=np.arange(2), taxel=np.array([9, 9]), p=np.ones(2, int))
  write_index(tmp_path, [("s1.npz", 0, "train"), ("s1.csv", 1, "train"),
                         ("a/b.npz", 0, "test"), ("a__b.npz", 1, "test")])
  cfg = make_config("evtouch", tmp_path, num_steps=1, cache_dir=str(tmp_path / "cache"))
  splits = data.load_dataset(cfg)
  want = {"s1.npz": (1, 1), "s1.csv": (5, 0), "b.npz": (7, 0), "a__b.npz": (9, 1)}
  for _ in range(2):  # decoded, then served from the cache
    for src in (splits.train, splits.test):
      for i in range(len(src)):
        taxel, pol = want[os.path.basename(src.samples[i].name)]
        img = src[i]["image"]
        assert img[0, taxel, 0, pol] == img.sum() > 0, src.samples[i].name
  assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4


def test_cache_is_invalidated_by_a_replaced_source_and_by_the_binning(tmp_path, monkeypatch):
  np.savez(tmp_path / "x.npz", t=np.arange(2), taxel=np.array([3, 3]), p=np.ones(2, int))
  np.savez(tmp_path / "y.npz", t=np.arange(2), taxel=np.array([4, 4]), p=np.ones(2, int))
  write_index(tmp_path, [("x.npz", 0, "train"), ("y.npz", 1, "test")])
  cfg = make_config("evtouch", tmp_path, num_steps=1, cache_dir=str(tmp_path / "cache"))
  first = data.load_dataset(cfg).train[0]["image"]
  assert first[0, 3, 0, 1] == 2
  key = data.load_dataset(cfg).train.samples[0].key
  time.sleep(0.01)
  np.savez(tmp_path / "x.npz", t=np.arange(3), taxel=np.array([6, 6, 6]), p=np.zeros(3, int))
  fixed = data.load_dataset(cfg)
  assert fixed.train.samples[0].key != key
  assert fixed.train[0]["image"][0, 6, 0, 0] == 3  # re-decoded, not the stale entry
  cfg.num_steps = 2
  assert data.load_dataset(cfg).train.samples[0].key != fixed.train.samples[0].key
  cfg.num_steps = 1
  cfg.data.refractory_us = 5
  assert data.load_dataset(cfg).train.samples[0].key != fixed.train.samples[0].key
  cfg.data.refractory_us = 0
  monkeypatch.setattr(events, "read_event_array", lambda p: pytest.fail("decoded again"))
  np.testing.assert_array_equal(data.load_dataset(cfg).train[0]["image"],
                                fixed.train[0]["image"])


def test_corrected_gesture_labels_csv_is_redecoded(tmp_path):
  directory, _ = fixtures.materialize("dvs_gesture")
  shutil.copytree(directory, tmp_path / "g")
  cfg = make_config("dvs_gesture", tmp_path / "g", num_steps=2, frame_size=(16, 16),
                    cache_dir=str(tmp_path / "cache"))
  before = data.load_dataset(cfg)
  img = before.train[0]["image"]
  csv_path = tmp_path / "g" / "DvsGesture" / "user01_fluorescent_labels.csv"
  rows = csv_path.read_text().splitlines()
  cls, start, end = rows[1].split(",")
  rows[1] = f"{cls},{start},{int(start) + 100_000}"  # a corrected, shorter segment
  time.sleep(0.01)
  csv_path.write_text("\n".join(rows) + "\n")
  after = data.load_dataset(cfg)
  assert after.train.samples[0].key != before.train.samples[0].key
  assert after.train.samples[1].key != before.train.samples[1].key  # same CSV: new key
  assert 0 < after.train[0]["image"].sum() < img.sum()


# ---------------------------------------------------------------- end to end

@pytest.mark.parametrize("config_module,layout,overrides", [
    (cifar10_dvs_config, "aedat4", {"time_jitter_us": 2000, "denoise_us": 200_000}),
    (evtouch_config, "tactilesgnet", {})])
def test_tiny_config_trains_on_a_non_original_layout(config_module, layout, overrides,
                                                     tmp_workdir):
  """The :tiny config on the fixture written in another layout (with event-stream
  augmentation for CIFAR10-DVS) trains end to end, and its neurons fire (dense fixture
  events). The model is the tiny MLP: layouts only change the data path, and
  test_configs.py trains each :tiny config's own model."""
  if layout == "aedat4":
    fixture_dir("cifar10_dvs", "aedat4")
  config = config_module.get_config("tiny")
  if config.model.name != "mlp":  # the data path is under test: the cheapest model compiles
    config.model = evtouch_config.get_config("tiny").model
  config.data.layout = layout
  for k, v in overrides.items():
    config.data[k] = v
  summary = train.train_and_evaluate(config, tmp_workdir)
  assert summary["steps"] == config.num_train_steps
  assert summary["test_firing_rate"] > 0.0


def test_spikingjelly_frames_reader_transposes_to_channel_last(tmp_path):
  frames = np.arange(2 * 2 * 3 * 4, dtype=np.float64).reshape(2, 2, 3, 4)  # [T, 2, H, W]
  np.savez_compressed(tmp_path / "f.npz", frames=frames)
  got = spikingjelly_layout.read_frames(str(tmp_path / "f.npz"))
  assert got.shape == (2, 3, 4, 2) and got.dtype == np.float32
  assert got[1, 2, 3, 0] == frames[1, 0, 2, 3] and got[0, 1, 2, 1] == frames[0, 1, 1, 2]
  np.savez(tmp_path / "g.npz", frames=np.zeros((2, 3, 4, 4)))
  with pytest.raises(data.DataError, match=r"expected \[T, 2, H, W\]"):
    spikingjelly_layout.check_frames(str(tmp_path / "g.npz"))
