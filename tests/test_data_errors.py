"""Damaged data fails with one line naming the file, everywhere: in the loader, in the pass
before training (``data.verify``), in a grain worker process and through the CLI.

Each case copies one dataset's fixture (its real on-disk format), damages one file in one way
and checks the ``DataError`` message; most cases call the loader in-process, a handful run
``python -m cfsnn_jax.main`` with ``data_workers`` 0 and 1."""

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cfsnn_jax import data, errors
from cfsnn_jax.data import fixtures, pipeline, verify
from data_test_helpers import make_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_UTF8 = b"caf\xe9 \xff\xfe\n"  # Latin-1 bytes: not UTF-8


def fixture_copy(name, tmp_path, layout="auto"):
  """A private copy of the dataset's fixture and the data overrides it needs."""
  if layout == "aedat4":
    pytest.importorskip("dv_processing")
    pytest.importorskip("aedat")
  src, overrides = fixtures.materialize(name, layout=layout)
  dst = tmp_path / name
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("frames_cache"))
  return dst, overrides


def truncate(path, keep=0.5):
  blob = open(path, "rb").read()
  open(path, "wb").write(blob[:max(1, int(len(blob) * keep)) | 1])  # odd length


def garble_start(path):
  blob = open(path, "rb").read()
  open(path, "wb").write(b"\x00garbage\x00" * 4 + blob[36:])


def prepend_not_utf8(path):
  blob = open(path, "rb").read()
  open(path, "wb").write(blob + NOT_UTF8)


def garble_middle(path):
  """Keeps the header and the size, damages the payload (only decoding can see it)."""
  blob = bytearray(open(path, "rb").read())
  mid = len(blob) // 2
  blob[mid - 200:mid + 200] = b"\xff\xd8\x00" * 133 + b"\x00"
  open(path, "wb").write(bytes(blob))


def extract_cifar10(root):
  import tarfile
  with tarfile.open(root / "cifar-10-python.tar.gz") as tar:
    tar.extractall(root, filter="data")
  os.remove(root / "cifar-10-python.tar.gz")
  return root / "cifar-10-batches-py" / "data_batch_3"


def first(root, *parts):
  """The first file (sorted) under root/parts... ."""
  folder = root.joinpath(*parts)
  return folder / sorted(n for n in os.listdir(folder) if not n.startswith("."))[0]


# (dataset, file to damage (root -> path), damage, found by the header pass, fragments)
CASES = {
    "cifar10-tarball-truncated": ("cifar10", lambda r: r / "cifar-10-python.tar.gz",
                                  truncate, None, ["cifar-10-python.tar.gz", "archive"]),
    "cifar10-pickle-garbage": ("cifar10", extract_cifar10, garble_start, None,
                               ["data_batch_3", "CIFAR python batch"]),
    "cifar100-tarball-truncated": ("cifar100", lambda r: r / "cifar-100-python.tar.gz",
                                   truncate, None, ["cifar-100-python.tar.gz"]),
    "tiny-jpeg-truncated": ("tiny_imagenet",
                            lambda r: first(r, "tiny-imagenet-200", "train", "n01443537",
                                            "images"), lambda p: truncate(p, 0.6), True,
                            ["n01443537_0.JPEG", "64x64 JPEG"]),
    "tiny-jpeg-header": ("tiny_imagenet",
                         lambda r: r / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG",
                         garble_start, True, ["val_3.JPEG", "64x64 JPEG"]),
    "tiny-jpeg-payload": ("tiny_imagenet",
                          lambda r: r / "tiny-imagenet-200" / "val" / "images" / "val_5.JPEG",
                          garble_middle, False, ["val_5.JPEG", "64x64 JPEG"]),
    "tiny-wnids-encoding": ("tiny_imagenet", lambda r: r / "tiny-imagenet-200" / "wnids.txt",
                            prepend_not_utf8, None, ["wnids.txt", "not UTF-8", "line 5"]),
    "tiny-annotations-encoding": ("tiny_imagenet",
                                  lambda r: r / "tiny-imagenet-200" / "val" /
                                  "val_annotations.txt", prepend_not_utf8, None,
                                  ["val_annotations.txt", "not UTF-8"]),
    "cifar10_dvs-aedat-truncated": ("cifar10_dvs",
                                    lambda r: r / "CIFAR10-DVS" / "cat" / "cifar10_cat_1.aedat",
                                    truncate, True, ["cifar10_cat_1.aedat", "multiple of 8"]),
    "cifar10_dvs-aedat-header": ("cifar10_dvs",
                                 lambda r: r / "CIFAR10-DVS" / "dog" / "cifar10_dog_2.aedat",
                                 garble_start, True, ["cifar10_dog_2.aedat", "#!AER-DAT2.0"]),
    "gesture-aedat-truncated": ("dvs_gesture",
                                lambda r: r / "DvsGesture" / "user02_fluorescent.aedat",
                                lambda p: truncate(p, 0.7), True,
                                ["user02_fluorescent.aedat", "truncated"]),
    "gesture-csv-encoding": ("dvs_gesture",
                             lambda r: r / "DvsGesture" / "user24_led_labels.csv",
                             prepend_not_utf8, None, ["user24_led_labels.csv", "not UTF-8"]),
    "gesture-trials-encoding": ("dvs_gesture", lambda r: r / "DvsGesture" /
                                "trials_to_test.txt", prepend_not_utf8, None,
                                ["trials_to_test.txt", "not UTF-8"]),
    "evtouch-npz-truncated": ("evtouch", lambda r: r / "events" / "s17.npz",
                              truncate, True, ["s17.npz", "unreadable", "BadZipFile"]),
    "evtouch-index-encoding": ("evtouch", lambda r: r / "samples.csv", prepend_not_utf8, None,
                               ["samples.csv", "not UTF-8"]),
    "sst2-tsv-encoding": ("sst2", lambda r: r / "SST-2" / "dev.tsv", prepend_not_utf8, None,
                          ["dev.tsv", "not UTF-8"]),
    "sst5-trees-encoding": ("sst5", lambda r: r / "trees" / "train.txt", prepend_not_utf8,
                            None, ["train.txt", "not UTF-8"]),
    # the other layouts of the event datasets and Tiny-ImageNet
    "cifar10_dvs:aedat4-truncated": ("cifar10_dvs:aedat4", lambda r: r / "CIFAR10DVS" / "cat" /
                                     "cifar10_cat_1.aedat4", lambda p: truncate(p, 0.6), True,
                                     ["cifar10_cat_1.aedat4", "AEDAT4"]),
    "cifar10_dvs:aedat4-header": ("cifar10_dvs:aedat4", lambda r: r / "CIFAR10DVS" / "cat" /
                                  "cifar10_cat_2.aedat4", garble_start, True,
                                  ["cifar10_cat_2.aedat4", "#!AER-DAT4.0"]),
    "cifar10_dvs:events_np-truncated": ("cifar10_dvs:events_np", lambda r: r / "events_np" /
                                        "ship" / "cifar10_ship_0.npz", truncate, True,
                                        ["cifar10_ship_0.npz", "BadZipFile"]),
    "cifar10_dvs:frames-truncated": ("cifar10_dvs:frames", lambda r: r /
                                     "frames_number_4_split_by_number" / "ship" /
                                     "cifar10_ship_1.npz", truncate, True,
                                     ["cifar10_ship_1.npz", "BadZipFile"]),
    "gesture:tonic-truncated": ("dvs_gesture:tonic", lambda r: r / "DVSGesture" /
                                "ibmGestureTrain" / "user02_fluorescent" / "5.npy",
                                lambda p: truncate(p, 0.7), True, ["5.npy", "array"]),
    "gesture:events_np-truncated": ("dvs_gesture:events_np", lambda r: first(
        r, "events_np", "test", "8"), truncate, True, ["events_np", "BadZipFile"]),
    "evtouch:tactilesgnet-truncated": ("evtouch:tactilesgnet", lambda r: r / "Ev-Objects" /
                                       "test" / "sample_3_label_3.npy",
                                       lambda p: truncate(p, 0.5), True,
                                       ["sample_3_label_3.npy", "array"]),
    "tiny:val_folders-jpeg-truncated": ("tiny_imagenet:val_folders", lambda r: r /
                                        "tiny-imagenet-200" / "val" / "n01629819" / "images" /
                                        "val_1.JPEG", lambda p: truncate(p, 0.6), True,
                                        ["val_1.JPEG", "64x64 JPEG"]),
}


def read_everything(splits):
  for source in (splits.train, splits.test):
    for i in range(len(source)):
      source[i]


def assert_one_line(err, fragments):
  msg = str(err)
  assert "\n" not in msg, msg
  for f in fragments:
    assert f in msg, (f, msg)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_damaged_file_is_one_line_naming_it(case, tmp_path, monkeypatch):
  """header=None: found while listing (load time); True: by the header pass, and without
  it when decoded; False: only when decoded (the header and size are intact)."""
  name, target, damage, header, fragments = CASES[case]
  name, _, layout = name.partition(":")
  root, overrides = fixture_copy(name, tmp_path, layout or "auto")
  path = target(root)
  damage(str(path))
  num_steps = 4 if layout == "frames" else 2
  for verify_on in ((True, False) if header is not None else (True,)):
    cfg = make_config(name, root, num_steps, cache=False, verify=verify_on, **overrides) \
        if name in data.RECORDED_EVENT_DATASETS else \
        make_config(name, root, verify=verify_on, **overrides)
    decoded = []
    if header:  # the header pass must find it without decoding anything
      monkeypatch.setattr(verify, "verify_files", _spy(verify.verify_files, decoded))
    with pytest.raises(data.DataError) as e:
      read_everything(data.load_dataset(cfg))
    monkeypatch.undo()
    assert isinstance(e.value, errors.UserError)
    assert_one_line(e.value, [str(path)] + fragments)
    if header and verify_on:
      assert decoded == ["raised"], "the header pass did not find the damaged file"


def _spy(fn, log):
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except data.DataError:
      log.append("raised")
      raise
  return wrapped


def test_data_error_is_a_user_error_and_pickles():
  e = data.DataError("/d/x.aedat", "truncated:\n 3 bytes; expected 8")
  assert isinstance(e, errors.UserError) and isinstance(e, ValueError)
  back = pickle.loads(pickle.dumps(e))
  assert type(back) is data.DataError and str(back) == str(e) == \
      "/d/x.aedat: truncated: 3 bytes; expected 8"
  assert back.path == "/d/x.aedat" and back.problem == "truncated: 3 bytes; expected 8"


def test_data_error_crosses_a_grain_worker_process(tmp_path):
  root, overrides = fixture_copy("cifar10_dvs", tmp_path)
  bad = root / "CIFAR10-DVS" / "bird" / "cifar10_bird_0.aedat"
  truncate(str(bad))
  splits = data.load_dataset(make_config("cifar10_dvs", root, cache=False, verify=False,
                                         **overrides))
  it = pipeline.train_iterator(splits.train, len(splits.train), 0, worker_count=1)
  with pytest.raises(data.DataError) as e:
    next(it)
  assert_one_line(e.value, [str(bad), "multiple of 8"])
  del it


def test_header_pass_accepts_every_clean_fixture_and_is_silent_off_a_terminal(capsys):
  for name in ("tiny_imagenet", "cifar10_dvs", "dvs_gesture", "evtouch"):
    splits = data.load_dataset(make_config(name, "fixture", verify=False))
    n, seconds = verify.verify_files(splits.files)
    assert n == len(splits.files) > 0 and seconds >= 0
    assert len({p for p, _ in splits.files}) == n
  assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal


def test_header_pass_parses_numpy_headers_under_the_npy_lock(monkeypatch):
  """The threaded header pass parses every .npy header (numpy's ast.literal_eval, not
  thread-safe on CPython < 3.11.9: a random 'AST constructor recursion depth mismatch' once
  broke CI here) while holding ``sources.NPY_LOCK``, as the loaders' np.load calls do."""
  from cfsnn_jax.data import sources
  parsed = []
  for name in ("read_array_header_1_0", "read_array_header_2_0"):
    real = getattr(np.lib.format, name)

    def locked_read(*a, _real=real, **k):
      parsed.append(sources.NPY_LOCK.locked())
      return _real(*a, **k)
    monkeypatch.setattr(np.lib.format, name, locked_read)
  splits = data.load_dataset(make_config("evtouch", "fixture", verify=False))
  verify.verify_files(splits.files)
  assert parsed and all(parsed)


def test_npy_and_npz_header_checks(tmp_path):
  good = tmp_path / "a.npy"
  np.save(good, np.arange(100, dtype=np.int32))
  verify.check_npy(str(good))
  truncate(str(good), 0.8)
  with pytest.raises(data.DataError, match="truncated or corrupt"):
    verify.check_npy(str(good))
  np.savez_compressed(tmp_path / "b.npz", t=np.arange(5), p=np.zeros(5, np.int8))
  assert verify.npz_members(str(tmp_path / "b.npz"), ["t", "p"]) == {
      "t": ((5,), np.dtype(np.int64)), "p": ((5,), np.dtype(np.int8))}
  with pytest.raises(data.DataError, match=r"missing arrays \['x'\]"):
    verify.npz_members(str(tmp_path / "b.npz"), ["t", "x"])
  np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(data.DataError, match="Python objects"):
    verify.check_npy(str(tmp_path / "o.npy"))


def run_cli(config, root, workers, *extra):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "cfsnn_jax.main", f"--config=configs/{config}.py:tiny",
         f"--workdir={root}/work", f"--config.data_dir={root}",
         f"--config.data_workers={workers}", *extra]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def assert_cli_error(proc, fragments):
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for f in fragments:
    assert f in lines[0], (f, lines[0])


@pytest.mark.parametrize("workers,verify_on", [(0, True), (1, False)])
def test_cli_names_the_damaged_recording(workers, verify_on, tmp_path):
  """Found by the header pass (workers 0) or when a worker process decodes it (workers 1)."""
  root, overrides = fixture_copy("cifar10_dvs", tmp_path)
  bad = root / "CIFAR10-DVS" / "frog" / "cifar10_frog_0.aedat"
  truncate(str(bad))
  proc = run_cli("cifar10_dvs", root, workers, f"--config.data.split_file="
                 f"{overrides['split_file']}", f"--config.data.verify={verify_on}",
                 f"--config.data.cache_dir={tmp_path}/cache")
  assert_cli_error(proc, [str(bad), "truncated", "multiple of 8"])


def test_cli_names_a_text_file_that_is_not_utf8(tmp_path):
  root, _ = fixture_copy("sst5", tmp_path)
  bad = root / "trees" / "test.txt"
  prepend_not_utf8(str(bad))
  assert_cli_error(run_cli("sst5", root, 0), [str(bad), "not UTF-8"])
