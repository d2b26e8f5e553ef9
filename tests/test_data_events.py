"""Event datasets on fixtures in the real on-disk formats: AEDAT 2.0 (CIFAR10-DVS), AEDAT 3.1
+ label CSVs + trial lists (DVS128 Gesture), generic event arrays (EvTouch), and the
synthetic MNIST events; frame binning and the on-disk cache against hand-computed values."""

import json
import os
import struct

import numpy as np
import pytest

from cfsnn_jax import data
from cfsnn_jax.data import aedat, cifar10_dvs, events, synthetic_events
from data_test_helpers import make_config, one_line_error


# ---------------------------------------------------------------- binning rule

def test_events_to_frames_splits_by_event_count():
  # 7 events, T = 3: d = 7 // 3 = 2 -> frames hold events [0,2), [2,4), [4,7).
  ev = events.Events(t=np.arange(7), x=np.array([0, 1, 2, 0, 1, 2, 2]),
                     y=np.array([0, 0, 1, 1, 0, 0, 0]), p=np.array([1, 0, 1, 1, 0, 0, 0]))
  f = events.events_to_frames(ev, 3, height=2, width=3)
  expected = np.zeros((3, 2, 3, 2), np.float32)
  expected[0, 0, 0, 1] = 1  # event 0: x=0, y=0, ON
  expected[0, 0, 1, 0] = 1  # event 1: x=1, y=0, OFF
  expected[1, 1, 2, 1] = 1  # event 2: x=2, y=1, ON
  expected[1, 1, 0, 1] = 1  # event 3: x=0, y=1, ON
  expected[2, 0, 1, 0] = 1  # event 4
  expected[2, 0, 2, 0] = 2  # events 5 and 6 (same pixel, same polarity)
  assert f.dtype == np.float32 and f.shape == (3, 2, 3, 2)
  np.testing.assert_array_equal(f, expected)


def test_fewer_events_than_frames_go_to_the_last_frame():
  ev = events.Events(np.arange(2), np.array([1, 1]), np.array([0, 0]), np.array([0, 1]))
  f = events.events_to_frames(ev, 4, height=1, width=2)
  assert f[:3].sum() == 0
  np.testing.assert_array_equal(f[3, 0, 1], [1, 1])
  assert events.events_to_frames(events.Events(*[np.zeros(0, int)] * 4), 2, 1, 1).sum() == 0


def test_out_of_range_coordinates_are_rejected():
  ev = events.Events(np.arange(1), np.array([3]), np.array([0]), np.array([0]))
  with pytest.raises(ValueError, match="outside"):
    events.events_to_frames(ev, 1, height=2, width=3)


def test_resize_frames_keeps_constants_and_shape():
  f = np.full((2, 128, 128, 2), 3.0, np.float32)
  f[1, ..., 1] = 5.0
  r = events.resize_frames(f, (48, 48))
  assert r.shape == (2, 48, 48, 2) and r.dtype == np.float32
  np.testing.assert_allclose(r[0], 3.0, rtol=1e-6)
  np.testing.assert_allclose(r[1, ..., 1], 5.0, rtol=1e-6)
  assert events.resize_frames(f, (128, 128)) is f or np.array_equal(
      events.resize_frames(f, (128, 128)), f)


def test_atomic_save_leaves_nothing_half_written(tmp_path, monkeypatch):
  path = str(tmp_path / "c" / "x.npy")

  def broken_save(f, arr):
    f.write(b"\x93NUMPY partial")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "save", broken_save)
  with pytest.raises(OSError):
    events.atomic_save_npy(path, np.ones(3))
  assert os.listdir(tmp_path / "c") == []  # neither the final file nor the temp file
  monkeypatch.undo()
  events.atomic_save_npy(path, np.arange(3.0))
  np.testing.assert_array_equal(np.load(path), [0, 1, 2])
  assert os.listdir(tmp_path / "c") == ["x.npy"]


# ---------------------------------------------------------------- AEDAT 2.0 / CIFAR10-DVS

def write_aedat2(path, xr, yr, pr, t, header=b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n"):
  addr = (np.asarray(yr) << 8) | (np.asarray(xr) << 1) | np.asarray(pr)
  words = np.stack([addr, np.asarray(t)], axis=1).astype(">u4")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(header + words.tobytes())


def recording(k, i):
  """Raw DVS128 events of the fixture recording i of class k (4 events)."""
  xr = np.array([0, 5, 127, k])
  yr = np.array([1, 2, 3, i])
  pr = np.array([0, 1, 1, 0])
  t = np.array([10, 20, 30, 40]) + 1000 * i
  return xr, yr, pr, t


@pytest.fixture
def cifar10_dvs_dir(tmp_path):
  root = tmp_path / "CIFAR10-DVS"
  for k, c in enumerate(cifar10_dvs.CLASSES):
    for i in range(3):
      write_aedat2(str(root / c / f"cifar10_{c}_{i}.aedat"), *recording(k, i))
  split = cifar10_dvs.make_split(num_per_class=3, test_fraction=1 / 3)
  (tmp_path / "split.json").write_text(json.dumps(split))
  return tmp_path


def test_read_aedat2_decodes_big_endian_words(tmp_path):
  path = str(tmp_path / "r.aedat")
  write_aedat2(path, [3, 127], [0, 100], [1, 0], [7, 2**31 + 5])
  t, addr = aedat.read_aedat2(path)
  np.testing.assert_array_equal(t, [7, 2**31 + 5])
  x, y, p = aedat.dvs128_address(addr)
  np.testing.assert_array_equal(x, [3, 127])
  np.testing.assert_array_equal(y, [0, 100])
  np.testing.assert_array_equal(p, [1, 0])


def test_cifar10_dvs_loader_frames_labels_and_split(cifar10_dvs_dir):
  cfg = make_config("cifar10_dvs", cifar10_dvs_dir, num_steps=2, frame_size=(128, 128),
                    split_file=str(cifar10_dvs_dir / "split.json"), cache=False)
  splits = data.load_dataset(cfg)
  assert splits.info.static_input is False and splits.info.input_shape == (128, 128, 2)
  assert (len(splits.train), len(splits.test)) == (20, 10)
  split = json.loads((cifar10_dvs_dir / "split.json").read_text())
  # the recording of class 'bird' (label 2) listed as test
  i = split["test"]["bird"][0]
  idx = [n for n, s in enumerate(splits.test.samples)
         if s.name.endswith(f"cifar10_bird_{i}.aedat")][0]
  ex = splits.test[idx]
  assert ex["label"] == 2 and ex["label"].dtype == np.int32
  f = ex["image"]
  assert f.shape == (2, 128, 128, 2) and f.dtype == np.float32
  # sensor x = 127 - y_raw, y = 127 - x_raw, p = 1 - p_raw; 4 events, T = 2: 2 per frame.
  xr, yr, pr, _ = recording(2, i)
  expected = np.zeros_like(f)
  for n in range(4):
    expected[n // 2, 127 - xr[n], 127 - yr[n], 1 - pr[n]] += 1
  np.testing.assert_array_equal(f, expected)
  train_keys = {s.name for s in splits.train.samples}
  test_keys = {s.name for s in splits.test.samples}
  assert not train_keys & test_keys and len(train_keys | test_keys) == 30


def test_cifar10_dvs_resize_and_cache(cifar10_dvs_dir, monkeypatch):
  cache_dir = cifar10_dvs_dir / "cache"
  cfg = make_config("cifar10_dvs", cifar10_dvs_dir, num_steps=2,
                    split_file=str(cifar10_dvs_dir / "split.json"), cache_dir=str(cache_dir))
  splits = data.load_dataset(cfg)
  assert splits.info.input_shape == (48, 48, 2)
  first = splits.train[0]["image"]
  assert first.shape == (2, 48, 48, 2) and first.sum() > 0
  key = splits.train.samples[0].key
  folder = cache_dir / "cifar10_dvs-v2" / key[:2]
  assert [str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*.npy")] == [
      f"cifar10_dvs-v2/{key[:2]}/{key}.npy"]
  monkeypatch.setattr(aedat, "read_aedat2", lambda p: pytest.fail("decoded again"))
  np.testing.assert_array_equal(splits.train[0]["image"], first)
  monkeypatch.undo()
  cached = folder / os.listdir(folder)[0]
  cached.write_bytes(cached.read_bytes()[:100])  # damaged by someone else: decoded again
  np.testing.assert_array_equal(splits.train[0]["image"], first)
  assert not [n for n in os.listdir(folder) if n.startswith(".tmp")]


def test_cifar10_dvs_errors(cifar10_dvs_dir, tmp_path):
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("cifar10_dvs", tmp_path / "nowhere"))
  one_line_error(e, "nowhere", "no CIFAR10-DVS layout", "<class>/cifar10_<class>_<n>.aedat")
  bad = str(cifar10_dvs_dir / "CIFAR10-DVS" / "cat" / "cifar10_cat_1.aedat")
  with open(bad, "wb") as f:
    f.write(b"#!AER-DAT3.1\r\n" + b"\0" * 16)
  with pytest.raises(data.DataError) as e:
    aedat.read_aedat2(bad)
  one_line_error(e, bad, "#!AER-DAT2.0")
  with open(bad, "wb") as f:
    f.write(b"#!AER-DAT2.0\r\n" + b"\0" * 12)
  with pytest.raises(data.DataError) as e:
    aedat.read_aedat2(bad)
  one_line_error(e, bad, "truncated", "multiple of 8")
  os.remove(bad)
  cfg = make_config("cifar10_dvs", cifar10_dvs_dir,
                    split_file=str(cifar10_dvs_dir / "split.json"))
  with pytest.raises(data.DataError) as e:
    data.load_dataset(cfg)
  one_line_error(e, "CIFAR10-DVS/cat", "missing recording 1 of class cat")


def test_published_cifar10_dvs_split_follows_the_documented_rule():
  with open(cifar10_dvs.PUBLISHED_SPLIT) as f:
    published = json.load(f)
  assert published == cifar10_dvs.make_split(1000, seed=0, test_fraction=0.1)
  assert published["classes"] == list(cifar10_dvs.CLASSES)
  for c in cifar10_dvs.CLASSES:
    test = published["test"][c]
    assert len(test) == len(set(test)) == 100 and 0 <= min(test) and max(test) < 1000
  assert published["test"]["airplane"] != published["test"]["automobile"]


# ---------------------------------------------------------------- AEDAT 3.1 / DVS Gesture

AEDAT31_HEADER = (b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
                  b"#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n")


def packet(etype, ev, overflow=0, size=8):
  """ev: list of (x, y, p, valid, ts) -> one AEDAT 3.1 packet (little-endian)."""
  body = b"".join(struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | v, ts)
                  for x, y, p, v, ts in ev)
  head = struct.pack("<hhiiiiii", etype, 1, size, 4, overflow, len(ev), len(ev),
                     sum(e[3] for e in ev))
  return head + body


def write_trial(root, stem, packets, labels):
  with open(os.path.join(root, stem + ".aedat"), "wb") as f:
    f.write(AEDAT31_HEADER + b"".join(packets))
  with open(os.path.join(root, stem + "_labels.csv"), "w") as f:
    f.write("class,startTime_usec,endTime_usec\n")
    for row in labels:
      f.write(",".join(str(v) for v in row) + "\n")


TRIAL_PACKETS = [
    packet(1, [(10, 20, 1, 1, 100), (11, 21, 0, 1, 150), (12, 22, 1, 0, 160),  # 3rd invalid
               (13, 23, 0, 1, 200)]),
    packet(2, [(1, 1, 1, 1, 210)]),  # a non-polarity packet: skipped
    packet(1, [(0, 127, 1, 1, 5), (127, 0, 1, 1, 6)], overflow=1),  # t = 2**31 + ts
]


@pytest.fixture
def gesture_dir(tmp_path):
  root = tmp_path / "DvsGesture"
  root.mkdir()
  write_trial(str(root), "user01_fluorescent", TRIAL_PACKETS,
              [(3, 100, 201), (11, 2**31, 2**31 + 10)])
  write_trial(str(root), "user02_led", TRIAL_PACKETS, [(1, 0, 160)])
  write_trial(str(root), "user29_lab", TRIAL_PACKETS, [(5, 100, 180), (2, 150, 2**31 + 6)])
  (root / "trials_to_train.txt").write_text("user01_fluorescent.aedat\nuser02_led.aedat\n\n")
  (root / "trials_to_test.txt").write_text("user29_lab.aedat\n")
  return tmp_path


def test_read_aedat31_decodes_polarity_packets(gesture_dir):
  ev = aedat.read_aedat31(str(gesture_dir / "DvsGesture" / "user01_fluorescent.aedat"))
  np.testing.assert_array_equal(ev.t, [100, 150, 200, 2**31 + 5, 2**31 + 6])
  np.testing.assert_array_equal(ev.x, [10, 11, 13, 0, 127])
  np.testing.assert_array_equal(ev.y, [20, 21, 23, 127, 0])
  np.testing.assert_array_equal(ev.p, [1, 0, 0, 1, 1])


def test_dvs_gesture_loader(gesture_dir):
  splits = data.load_dataset(make_config("dvs_gesture", gesture_dir, num_steps=2, cache=False))
  assert splits.info.num_classes == 11 and splits.info.input_shape == (128, 128, 2)
  assert (len(splits.train), len(splits.test)) == (3, 2)
  labels = [int(splits.train[i]["label"]) for i in range(3)]
  assert labels == [2, 10, 0]  # classes 3, 11, 1 -> 0-based
  f = splits.train[0]["image"]  # events with 100 <= t < 201: (10,20,ON) (11,21,OFF) (13,23,OFF)
  expected = np.zeros((2, 128, 128, 2), np.float32)
  expected[0, 20, 10, 1] = 1  # d = 3 // 2 = 1: frame 0 holds event 0
  expected[1, 21, 11, 0] = 1
  expected[1, 23, 13, 0] = 1
  np.testing.assert_array_equal(f, expected)
  g = splits.train[1]["image"]  # the two events after the timestamp overflow
  assert g[0, 127, 0, 1] == 1 and g[1, 0, 127, 1] == 1 and g.sum() == 2
  t = splits.test[1]["image"]  # 150 <= t < 2**31 + 6: 150, 200, 2**31 + 5
  assert t.sum() == 3 and splits.test[1]["label"] == 1


def test_dvs_gesture_errors(gesture_dir, tmp_path):
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("dvs_gesture", tmp_path / "none"))
  one_line_error(e, "none", "trials_to_train.txt")
  root = gesture_dir / "DvsGesture"
  (root / "trials_to_test.txt").write_text("user30_led.aedat\n")
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("dvs_gesture", gesture_dir))
  one_line_error(e, "user30_led.aedat", "trials_to_test.txt")
  (root / "trials_to_test.txt").write_text("user29_lab.aedat\n")
  csv_path = root / "user02_led_labels.csv"
  csv_path.write_text("class,startTime_usec,endTime_usec\n12,0,10\n")
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("dvs_gesture", gesture_dir))
  one_line_error(e, str(csv_path), "unknown label 12", "1..11")
  path = root / "user01_fluorescent.aedat"
  path.write_bytes(AEDAT31_HEADER + TRIAL_PACKETS[0][:-5])
  with pytest.raises(data.DataError) as e:
    aedat.read_aedat31(str(path))
  one_line_error(e, str(path), "truncated")
  path.write_bytes(b"#!AER-DAT3.1\r\n#no end\r\n")
  with pytest.raises(data.DataError) as e:
    aedat.read_aedat31(str(path))
  one_line_error(e, str(path), "#!END-HEADER")
  path.write_bytes(b"garbage" + TRIAL_PACKETS[0])
  with pytest.raises(data.DataError) as e:
    aedat.read_aedat31(str(path))
  one_line_error(e, str(path), "#!AER-DAT3.1")


# ---------------------------------------------------------------- EvTouch (generic arrays)

def test_evtouch_generic_event_arrays(tmp_path):
  (tmp_path / "ev").mkdir()
  # sample a: taxels 0, 38, 5 (unsorted times are sorted); sample b: a csv file
  np.savez(tmp_path / "ev" / "a.npz", t=np.array([30, 10, 20]), taxel=np.array([5, 0, 38]),
           p=np.array([1, 0, 1]))
  (tmp_path / "ev" / "b.csv").write_text("t,taxel,p\n1,2,1\n2,2,1\n3,4,0\n4,4,0\n")
  np.savez(tmp_path / "ev" / "c.npz", t=np.array([1]), taxel=np.array([1]), p=np.array([0]))
  (tmp_path / "samples.csv").write_text(
      "file,label,split\nev/a.npz,3,train\nev/b.csv,0,train\nev/c.npz,1,test\n")
  splits = data.load_dataset(make_config("evtouch", tmp_path, num_steps=3, cache=False))
  assert splits.info.input_shape == (39, 1, 2) and splits.info.num_classes == 4
  assert (len(splits.train), len(splits.test)) == (2, 1)
  a = splits.train[0]
  assert a["label"] == 3 and a["image"].shape == (3, 39, 1, 2)
  expected = np.zeros((3, 39, 1, 2), np.float32)
  expected[0, 0, 0, 0] = 1  # t=10 taxel 0 OFF
  expected[1, 38, 0, 1] = 1  # t=20 taxel 38 ON
  expected[2, 5, 0, 1] = 1  # t=30 taxel 5 ON
  np.testing.assert_array_equal(a["image"], expected)
  b = splits.train[1]["image"]  # 4 events, T=3: d=1 -> frames 1, 1, 2 events
  assert b[0, 2, 0, 1] == 1 and b[1, 2, 0, 1] == 1 and b[2, 4, 0, 0] == 2
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("evtouch", tmp_path / "none"))
  one_line_error(e, "none", "samples.csv")
  (tmp_path / "samples.csv").write_text("file,label,split\nev/a.npz,cup,train\n")
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("evtouch", tmp_path))
  one_line_error(e, "samples.csv", "unknown label 'cup'")
  (tmp_path / "samples.csv").write_text("file,label,split\nev/a.npz,5,train\nev/c.npz,0,test\n")
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("evtouch", tmp_path, num_classes=4))
  one_line_error(e, "unknown label 5", "0..3")


# ---------------------------------------------------------------- synthetic events

def test_mnist_dvs_synthetic_is_labelled_synthetic_and_balanced():
  cfg = make_config("mnist_dvs_synthetic", "", num_steps=4)
  splits = data.load_dataset(cfg)
  assert splits.info.synthetic and not splits.info.static_input
  assert (len(splits.train), len(splits.test)) == (4000, 1000)
  ex = splits.train[7]
  f = ex["image"]
  assert f.shape == (4, 34, 34, 2) and f.dtype == np.float32 and f.sum() > 100
  # the saccade path is closed: every pixel emits as many ON as OFF events
  np.testing.assert_array_equal(f[..., 1].sum(0), f[..., 0].sum(0))
  np.testing.assert_array_equal(data.load_dataset(cfg).train[7]["image"], f)
  # no events on a blank image; a lone pixel emits events only near its path
  blank = synthetic_events.simulate_events(np.zeros((28, 28)), (34, 34), 0.15, 4, 2.0)
  assert len(blank) == 0
  dot = np.zeros((28, 28))
  dot[10, 10] = 255
  ev = synthetic_events.simulate_events(dot, (34, 34), 0.15, 4, 2.0)
  assert len(ev) > 0 and ev.y.min() >= 13 and ev.y.max() <= 16 and ev.x.min() >= 13
  assert ev.x.max() <= 16 and np.all(np.diff(ev.t) >= 0)
