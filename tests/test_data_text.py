"""SST-2 (GLUE TSV, tfds glue/sst2 via mock_data) and SST-5 (PTB trees) on fixtures."""

import numpy as np
import pytest

from cfsnn_jax import data
from cfsnn_jax.data import sst
from data_test_helpers import make_config, one_line_error


def write_sst2(tmp_path, dev_label="1"):
  d = tmp_path / "SST-2"
  d.mkdir(exist_ok=True)
  (d / "train.tsv").write_text(
      "sentence\tlabel\n"
      "a charming movie \t1\n"
      "a dull , dull movie \t0\n"
      "Charming and moving\t1\n"
      "zero stars \t0\n")
  (d / "dev.tsv").write_text(f"sentence\tlabel\nan unseen charming film \t{dev_label}\n"
                             "dull\t0\n")


def test_sst2_tsv_vocabulary_ids_padding_and_truncation(tmp_path):
  write_sst2(tmp_path)
  splits = data.load_dataset(make_config("sst2", tmp_path, max_len=4))
  vocab = splits.train.vocabulary
  # counts: a 2, charming 2, dull 2, movie 2, ',' 1, and 1, moving 1, stars 1, zero 1
  assert vocab.words == ["<pad>", "<unk>", "a", "charming", "dull", "movie", ",", "and",
                         "moving", "stars", "zero"]
  assert splits.info.vocab_size == 11 and splits.info.input_shape == (4,)
  assert splits.info.num_classes == 2 and (len(splits.train), len(splits.test)) == (4, 2)
  ex = splits.train[1]  # "a dull , dull movie" cut to 4 tokens
  assert ex["image"].dtype == np.int32 and ex["label"] == 0
  np.testing.assert_array_equal(ex["image"], [2, 4, 6, 4])
  np.testing.assert_array_equal(splits.train[2]["image"], [3, 7, 8, 0])  # lowercased, padded
  np.testing.assert_array_equal(splits.test[0]["image"], [1, 1, 3, 1])  # OOV = 1
  assert splits.test[0]["label"] == 1


def test_vocabulary_min_freq_and_max_vocab(tmp_path):
  write_sst2(tmp_path)
  splits = data.load_dataset(make_config("sst2", tmp_path, min_freq=2, max_vocab=3))
  assert splits.train.vocabulary.words == ["<pad>", "<unk>", "a", "charming", "dull"]
  assert splits.info.vocab_size == 5 and splits.info.input_shape == (64,)


def test_sst2_errors(tmp_path):
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("sst2", tmp_path, source="tsv"))
  one_line_error(e, "SST-2", "train.tsv")
  write_sst2(tmp_path, dev_label="positive")
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("sst2", tmp_path))
  one_line_error(e, "dev.tsv", "line 2", "unknown label 'positive'")


def test_sst2_tfds_data_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=9):
    splits = data.load_dataset(make_config("sst2", "", source="tfds", max_len=8))
  assert (len(splits.train), len(splits.test)) == (9, 9)
  assert splits.info.vocab_size == len(splits.train.vocabulary) > 2
  ex = splits.train[0]
  assert ex["image"].shape == (8,) and ex["image"].dtype == np.int32
  assert ex["label"] in (0, 1) and ex["image"][0] >= 2  # the first word is in the vocabulary


TREES_TRAIN = """\
(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (3 lovely)) (2 film))) (2 .)))
(1 (2 (2 a) (1 dull)) (2 (2 -LRB-) (1 film) (2 -RRB-)))
(4 (2 A) (4 (4 lovely) (2 film)))
"""
TREES_TEST = "(0 (0 awful) (2 (2 new) (2 film)))\n"


def write_trees(tmp_path, test=TREES_TEST):
  d = tmp_path / "trees"
  d.mkdir(exist_ok=True)
  (d / "train.txt").write_text(TREES_TRAIN)
  (d / "dev.txt").write_text(TREES_TEST)
  (d / "test.txt").write_text(test)


def test_sst5_ptb_trees_root_labels_and_leaves(tmp_path):
  write_trees(tmp_path)
  assert sst.parse_tree(TREES_TRAIN.splitlines()[1]) == (1, ["a", "dull", "(", "film", ")"])
  splits = data.load_dataset(make_config("sst5", tmp_path, max_len=6))
  assert splits.info.num_classes == 5 and (len(splits.train), len(splits.test)) == (3, 1)
  assert [int(splits.train[i]["label"]) for i in range(3)] == [3, 1, 4]
  vocab = splits.train.vocabulary
  # counts: film 3, a 3 ("a", "a", "A" lowercased), lovely 2, then 1 each alphabetically
  assert vocab.words[:5] == ["<pad>", "<unk>", "a", "film", "lovely"]
  assert vocab.words[5:] == ["'s", "(", ")", ".", "dull", "it"]
  np.testing.assert_array_equal(splits.train[1]["image"], [2, 9, 6, 3, 7, 0])
  np.testing.assert_array_equal(splits.test[0]["image"], [1, 1, 3, 0, 0, 0])
  assert splits.test[0]["label"] == 0


def test_sst5_errors(tmp_path):
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("sst5", tmp_path))
  one_line_error(e, "trees", "train.txt")
  write_trees(tmp_path, test="(7 (2 odd) (2 label))\n")
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("sst5", tmp_path))
  one_line_error(e, "test.txt", "line 1", "unknown label 7", "0..4")
  write_trees(tmp_path, test="(2 (2 unbalanced) (2 tree)\n")
  with pytest.raises(data.DataError) as e:
    data.load_dataset(make_config("sst5", tmp_path))
  one_line_error(e, "test.txt", "line 1", "PTB tree")
