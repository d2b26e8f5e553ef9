"""Image datasets on fixtures in the real on-disk formats (CIFAR python pickles and tarballs,
tfds via ``tfds.testing.mock_data``, Tiny-ImageNet JPEG folders) and the augmentation."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from cfsnn_jax import data
from cfsnn_jax.data import augment, autoaugment
from data_test_helpers import make_config, one_line_error


# ---------------------------------------------------------------- CIFAR python tarballs

def pixel(n, c, y, x):
  """The fixture's value of image n, channel c, row y, column x."""
  return (50 * c + 3 * y + x + 7 * n) % 256


def cifar_batch(first, count, label_key, labels):
  n, c, y, x = np.meshgrid(np.arange(first, first + count), np.arange(3), np.arange(32),
                           np.arange(32), indexing="ij")
  flat = pixel(n, c, y, x).astype(np.uint8).reshape(count, 3072)  # R plane, G, B; row-major
  return {b"batch_label": b"fixture", label_key: list(labels), b"data": flat,
          b"filenames": [b"f%d.png" % i for i in range(count)]}


def write_cifar10(tmp_path, labels=None):
  members = {}
  for b in range(5):
    members[f"data_batch_{b + 1}"] = cifar_batch(2 * b, 2, b"labels", labels or [b, 9 - b])
  members["test_batch"] = cifar_batch(10, 3, b"labels", [3, 1, 4])
  members["batches.meta"] = {b"label_names": [b"airplane"] * 10}
  path = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    for name, obj in members.items():
      blob = pickle.dumps(obj, protocol=2)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return path


def test_cifar10_tarball_shapes_labels_and_channel_order(tmp_path):
  write_cifar10(tmp_path)
  splits = data.load_dataset(make_config("cifar10", tmp_path))
  assert splits.info.num_classes == 10 and splits.info.input_shape == (32, 32, 3)
  assert (len(splits.train), len(splits.test)) == (10, 3)
  ex = splits.train[3]  # batch 2, second image: n = 3, label 9 - 1 = 8
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
  assert ex["label"] == 8 and ex["label"].dtype == np.int32
  for (y, x, c) in [(0, 0, 0), (0, 0, 2), (5, 17, 1), (31, 2, 2)]:
    assert ex["image"][y, x, c] == pixel(3, c, y, x), (y, x, c)
  np.testing.assert_array_equal([int(splits.test[i]["label"]) for i in range(3)], [3, 1, 4])


def test_cifar100_extracted_folder_uses_fine_labels(tmp_path):
  folder = tmp_path / "cifar-100-python"
  folder.mkdir()
  train = cifar_batch(0, 4, b"fine_labels", [0, 99, 42, 7])
  train[b"coarse_labels"] = [0, 19, 5, 1]
  (folder / "train").write_bytes(pickle.dumps(train, protocol=2))
  (folder / "test").write_bytes(pickle.dumps(cifar_batch(4, 2, b"fine_labels", [5, 6])))
  splits = data.load_dataset(make_config("cifar100", tmp_path))
  assert splits.info.num_classes == 100 and (len(splits.train), len(splits.test)) == (4, 2)
  assert [int(splits.train[i]["label"]) for i in range(4)] == [0, 99, 42, 7]
  assert splits.test[1]["image"][4, 9, 1] == pixel(5, 1, 4, 9)


def test_cifar_errors(tmp_path):
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("cifar10", tmp_path / "missing", source="tarball"))
  one_line_error(e, "missing", "cifar-10-python.tar.gz")
  path = write_cifar10(tmp_path)
  blob = path.read_bytes()
  path.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("cifar10", tmp_path))
  one_line_error(e, str(path), "truncated or corrupt archive")
  write_cifar10(tmp_path, labels=[1, 10])
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("cifar10", tmp_path))
  one_line_error(e, "data_batch_1", "unknown label 10", "0..9")


def test_cifar_pickles_with_foreign_globals_are_refused(tmp_path):
  folder = tmp_path / "cifar-100-python"
  folder.mkdir()
  (folder / "train").write_bytes(pickle.dumps({b"data": os.system}))
  (folder / "test").write_bytes(pickle.dumps({}))
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("cifar100", tmp_path))
  one_line_error(e, "train", "forbidden global")


def test_cifar_tfds_data_source_with_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  for name, k in (("cifar10", 10), ("cifar100", 100)):
    with tfds.testing.mock_data(num_examples=6):
      splits = data.load_dataset(make_config(name, "", source="tfds"))
    assert splits.info.num_classes == k and (len(splits.train), len(splits.test)) == (6, 6)
    ex = splits.train[5]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["label"].dtype == np.int32 and 0 <= ex["label"] < k
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("cifar10", tmp_path, source="tfds"))
  one_line_error(e, str(tmp_path), "cifar10", "array_record")


# ---------------------------------------------------------------- Tiny-ImageNet

def write_jpeg(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format="JPEG", quality=95)


@pytest.fixture
def tiny_dir(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  wnids = ["n02", "n01", "n03"]  # file order != sorted order
  root.mkdir()
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  colours = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200)}
  for w in wnids:
    for i in range(2):
      write_jpeg(str(root / "train" / w / "images" / f"{w}_{i}.JPEG"),
                 np.full((64, 64, 3), colours[w], np.uint8))
  write_jpeg(str(root / "train" / "n03" / "images" / "n03_2.JPEG"),
             np.full((64, 64), 90, np.uint8))  # a grayscale JPEG
  write_jpeg(str(root / "val" / "images" / "val_0.JPEG"), np.full((64, 64, 3), 128, np.uint8))
  write_jpeg(str(root / "val" / "images" / "val_1.JPEG"), np.full((64, 64), 60, np.uint8))
  (root / "val" / "val_annotations.txt").write_text(
      "val_0.JPEG\tn03\t0\t0\t10\t10\nval_1.JPEG\tn01\t1\t2\t30\t40\n")
  return tmp_path


def test_tiny_imagenet_layout(tiny_dir):
  splits = data.load_dataset(make_config("tiny_imagenet", tiny_dir))
  assert splits.info.num_classes == 3 and splits.info.input_shape == (64, 64, 3)
  assert (len(splits.train), len(splits.test)) == (7, 2)
  labels = [int(splits.train[i]["label"]) for i in range(7)]
  assert labels == [0, 0, 1, 1, 2, 2, 2]  # sorted wnids: n01, n02, n03
  first = splits.train[0]["image"]
  assert first.dtype == np.uint8 and first.shape == (64, 64, 3)
  np.testing.assert_allclose(first.mean(axis=(0, 1)), (200, 30, 30), atol=3)  # RGB order
  gray = splits.train[6]["image"]
  assert gray.shape == (64, 64, 3)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  assert abs(int(gray[0, 0, 0]) - 90) <= 2
  assert [int(splits.test[i]["label"]) for i in range(2)] == [2, 0]
  assert abs(int(splits.test[1]["image"][5, 5, 1]) - 60) <= 2


def test_tiny_imagenet_errors(tiny_dir, tmp_path):
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("tiny_imagenet", tmp_path / "none"))
  one_line_error(e, "wnids.txt")
  ann = tiny_dir / "tiny-imagenet-200" / "val" / "val_annotations.txt"
  ann.write_text("val_0.JPEG\tn09\t0\t0\t10\t10\n")
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("tiny_imagenet", tiny_dir))
  one_line_error(e, str(ann), "line 1", "unknown label 'n09'")
  ann.write_text("val_0.JPEG\tn01\t0\t0\t10\t10\n")
  broken = tiny_dir / "tiny-imagenet-200" / "train" / "n01" / "images" / "n01_0.JPEG"
  broken.write_bytes(b"not a jpeg")
  with pytest.raises(data.DataError) as e:  # the header pass, before training
    data.load_dataset(make_config("tiny_imagenet", tiny_dir))
  one_line_error(e, str(broken), "unreadable", "64x64 JPEG")
  splits = data.load_dataset(make_config("tiny_imagenet", tiny_dir, verify=False))
  with pytest.raises(data.DataError) as e:
    splits.train[0]
  one_line_error(e, str(broken), "unreadable", "64x64 JPEG")


# ---------------------------------------------------------------- augmentation

def test_crop_flip_normalise_against_hand_computed_values():
  img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  aug = augment.ImageAugment(crop_padding=2, flip=False, mean=(0.5, 0.5, 0.5),
                             std=(0.25, 0.5, 1.0))
  rng = np.random.default_rng(3)
  dy, dx = np.random.default_rng(3).integers(0, 5, size=2)
  out = aug.image(img, rng)
  padded = np.zeros((8, 9, 3), np.uint8)
  padded[2:6, 2:7] = img
  expected = (padded[dy:dy + 4, dx:dx + 5] / 255.0 - 0.5) / np.array([0.25, 0.5, 1.0])
  assert out.dtype == np.float32 and out.shape == (4, 5, 3)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  flip = augment.ImageAugment(crop_padding=0, flip=True)
  seen = {bool(np.allclose(flip.image(img, np.random.default_rng(s)), img[:, ::-1] / 255.0))
          for s in range(20)}
  assert seen == {True, False}


def test_cutout_zeroes_one_square_after_normalisation():
  img = np.full((32, 32, 3), 200, np.uint8)
  aug = augment.ImageAugment(crop_padding=0, flip=False, cutout_length=8)
  out = aug.image(img, np.random.default_rng(0))
  zero = np.all(out == 0, axis=-1)
  rows, cols = np.nonzero(zero)
  assert 16 <= zero.sum() <= 64 and rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8
  assert np.allclose(out[~zero], 200 / 255)


def test_autoaugment_point_ops_equal_pil_and_policy_is_seeded():
  rng = np.random.default_rng(0)
  for _ in range(20):
    x = rng.integers(20, 230, (32, 32, 3)).astype(np.uint8)
    for op, v in [("Invert", 0), ("Posterize", 5), ("Solarize", 113.3), ("AutoContrast", 0),
                  ("Equalize", 0)]:
      np.testing.assert_array_equal(autoaugment.apply_array_op(x, op, v),
                                    np.asarray(autoaugment.apply_op(Image.fromarray(x), op, v,
                                                                    128)))
  x = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
  outs = [autoaugment.cifar10_policy(x, np.random.default_rng(s)) for s in range(30)]
  assert all(o.dtype == np.uint8 and o.shape == x.shape for o in outs)
  assert sum(not np.array_equal(o, x) for o in outs) > 10  # most draws change the image
  np.testing.assert_array_equal(autoaugment.cifar10_policy(x, np.random.default_rng(7)),
                                outs[7])
  assert len(autoaugment.CIFAR10_POLICY) == 25
  np.testing.assert_array_equal(autoaugment.magnitudes("Posterize", 32),
                                [8, 8, 7, 7, 6, 6, 5, 5, 4, 4])
  assert autoaugment.magnitudes("TranslateX", 32)[9] == pytest.approx(150 / 331 * 32)


def test_hooks_give_the_float32_batch_contract(tmp_path):
  write_cifar10(tmp_path)
  cfg = make_config("cifar10", tmp_path, cutout=True)
  splits = data.load_dataset(cfg)
  train_fn = data.train_augment(cfg, splits.info)
  eval_fn = data.eval_transform(cfg, splits.info)
  ex = splits.train[0]
  out = train_fn(ex, np.random.default_rng(0))
  assert out["image"].dtype == np.float32 and out["image"].shape == (32, 32, 3)
  ev = eval_fn(ex)["image"]
  mean, std = np.array(data.default_data_config("cifar10").mean), np.array(
      data.default_data_config("cifar10").std)
  np.testing.assert_allclose(ev, (ex["image"] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
  assert data.train_augment(make_config("digits", ""), data.DatasetInfo("digits", 10, (8, 8, 1))
                            ) is None
