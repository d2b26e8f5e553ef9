"""SST-2 (GLUE TSV or tfds ``glue/sst2``) and SST-5 (original PTB trees) as token ids.

Contract: ``load_sst2(config)`` / ``load_sst5(config)`` -> ``DatasetSplits`` of
``{"image": int32 [max_len] token ids, "label": int32}``; ``DatasetInfo(input_shape=(max_len,),
vocab_size=V)``; 2 / 5 classes. Text: optionally lowercased, split on whitespace (both sources
are already tokenised; the trees' ``-LRB-`` / ``-RRB-`` become ``(`` / ``)``). Vocabulary
(``Vocabulary.build``) from the training split only: id 0 = padding, 1 = out-of-vocabulary,
then the words seen at least ``min_freq`` times, most frequent first, ties alphabetical, at
most ``max_vocab`` of them (0: all). Sequences are cut to ``max_len`` and padded with 0 at
the end. ``splits.train.vocabulary`` is the ``Vocabulary`` (to decode ids back to words).

Sources and splits:
- SST-2 ``tsv``: ``<data_dir>/SST-2/{train,dev}.tsv`` (or the two files in ``data_dir``),
  header ``sentence\tlabel``; train = train.tsv (67 349), test = dev.tsv (872: GLUE's test
  labels are not public). ``tfds``: ``tfds.data_source('glue/sst2')``, train / validation.
  ``auto``: the TSV files when present, tfds otherwise.
- SST-5: ``<data_dir>/trees/{train,test}.txt`` (or the files in ``data_dir``), the PTB trees
  of ``trainDevTestTrees_PTB.zip``, one sentence per line; label = the root node's label
  (0..4), words = the leaves in order; train = train.txt (8 544), test = test.txt (2 210).
A label outside the classes or a malformed line is one ``DataError`` line naming the file.
"""

from __future__ import annotations

from cfsnn_jax.errors import UserError

import collections
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

from cfsnn_jax.data.options import data_options
from cfsnn_jax.data.sources import (ArraySource, DataError, DatasetInfo, DatasetSplits,
                                    read_text, tfds_data_sources)

PAD_ID = 0
OOV_ID = 1
_LEAF = re.compile(r"\((\d+) ([^()\s]+)\)")
_PTB_ESCAPES = {"-LRB-": "(", "-RRB-": ")"}


class Vocabulary:
  """Word-level vocabulary: ``<pad>`` = 0, ``<unk>`` = 1, then the kept training words."""

  def __init__(self, words: Sequence[str]):
    self.words = ["<pad>", "<unk>"] + list(words)
    self.ids = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def build(cls, sentences: Iterable[Sequence[str]], min_freq: int = 1,
            max_vocab: int = 0) -> "Vocabulary":
    counts = collections.Counter(w for s in sentences for w in s)
    kept = sorted((w for w, c in counts.items() if c >= min_freq),
                  key=lambda w: (-counts[w], w))
    return cls(kept[:max_vocab] if max_vocab > 0 else kept)

  def __len__(self) -> int:
    return len(self.words)

  def encode(self, tokens: Sequence[str], max_len: int) -> np.ndarray:
    ids = np.full((max_len,), PAD_ID, np.int32)
    toks = [self.ids.get(w, OOV_ID) for w in tokens[:max_len]]
    ids[:len(toks)] = toks
    return ids


def tokenize(text: str, lowercase: bool) -> list[str]:
  return (text.lower() if lowercase else text).split()


def read_glue_tsv(path: str) -> tuple[list[str], list[int]]:
  """Sentences and 0/1 labels of a GLUE SST-2 ``train.tsv`` / ``dev.tsv``."""
  lines = read_text(path, "a GLUE SST-2 TSV (sentence\\tlabel)").splitlines()
  if not lines or lines[0].split("\t")[:2] != ["sentence", "label"]:
    raise DataError(path, f"header {lines[0][:40] if lines else ''!r}; expected "
                    "'sentence\\tlabel' (GLUE SST-2 TSV)")
  sentences, labels = [], []
  for n, line in enumerate(lines[1:], 2):
    if not line.strip():
      continue
    sentence, _, label = line.rpartition("\t")
    if label.strip() not in ("0", "1"):
      raise DataError(path, f"line {n}: unknown label {label.strip()[:20]!r}; expected 0 or 1")
    sentences.append(sentence)
    labels.append(int(label))
  return sentences, labels


def parse_tree(line: str) -> tuple[int, list[str]]:
  """``(root label, leaf words)`` of one PTB-format SST tree; ValueError when malformed."""
  s = line.strip()
  m = re.match(r"\((\d+) ", s)
  if not m or s.count("(") != s.count(")") or not s.endswith(")"):
    raise ValueError(f"expected a PTB tree '(label (label word) ...)', got {s[:40]!r}")
  words = [_PTB_ESCAPES.get(w, w) for _, w in _LEAF.findall(s)]
  if not words:
    raise ValueError(f"tree without leaves: {s[:40]!r}")
  return int(m.group(1)), words


def read_trees(path: str, num_classes: int = 5) -> tuple[list[list[str]], list[int]]:
  sentences, labels = [], []
  text = read_text(path, "SST PTB trees, one '(label (label word) ...)' per line")
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      label, words = parse_tree(line)
    except ValueError as e:
      raise DataError(path, f"line {n}: {e}") from None
    if not 0 <= label < num_classes:
      raise DataError(path, f"line {n}: unknown label {label}; expected a root label "
                      f"0..{num_classes - 1}")
    sentences.append(words)
    labels.append(label)
  return sentences, labels


def _find(data_dir: str, folder: str, names: Sequence[str], expected: str) -> list[str]:
  for root in (os.path.join(data_dir, folder), data_dir):
    paths = [os.path.join(root, n) for n in names]
    if all(os.path.isfile(p) for p in paths):
      return paths
  missing = os.path.join(data_dir, folder, names[0])
  raise DataError(missing, f"missing file; expected {expected}")


def _splits(name: str, num_classes: int, opts: Any, train: tuple[list, list],
            test: tuple[list, list]) -> DatasetSplits:
  vocab = Vocabulary.build(train[0], opts.min_freq, opts.max_vocab)

  def encode(part):
    ids = np.stack([vocab.encode(s, opts.max_len) for s in part[0]]) if part[0] else \
        np.zeros((0, opts.max_len), np.int32)
    return ArraySource(image=ids, label=np.asarray(part[1], np.int32))

  info = DatasetInfo(name=name, num_classes=num_classes, input_shape=(int(opts.max_len),),
                     vocab_size=len(vocab))
  splits = DatasetSplits(encode(train), encode(test), info)
  splits.train.vocabulary = vocab  # for inspection / decoding predictions
  return splits


def _tfds_sst2(data_dir: str) -> tuple[tuple[list, list], tuple[list, list]]:
  import tensorflow_datasets.text.glue  # noqa: F401  registers glue/sst2 for mocks
  parts = []
  for ds in tfds_data_sources("glue/sst2", data_dir, ("train", "validation")):
    sentences, labels = [], []
    for i in range(len(ds)):
      ex = ds[i]
      s = ex["sentence"]
      sentences.append(s.decode("utf-8") if isinstance(s, bytes) else str(s))
      labels.append(int(ex["label"]))
    parts.append((sentences, labels))
  return parts[0], parts[1]


def load_sst2(config: Any) -> DatasetSplits:
  opts = data_options(config, "sst2")
  source = opts.source
  if source == "auto":
    has_tsv = any(os.path.isfile(os.path.join(config.data_dir, d, "train.tsv"))
                  for d in ("SST-2", "")) if config.data_dir else False
    source = "tsv" if has_tsv else "tfds"
  if source == "tsv":
    paths = _find(config.data_dir, "SST-2", ("train.tsv", "dev.tsv"),
                  "the GLUE SST-2 files SST-2/train.tsv and SST-2/dev.tsv")
    raw_train, raw_test = read_glue_tsv(paths[0]), read_glue_tsv(paths[1])
  elif source == "tfds":
    raw_train, raw_test = _tfds_sst2(config.data_dir)
  else:
    raise UserError(f"unknown data.source {source!r} for sst2; valid choices: auto, tfds, tsv")
  for labels in (raw_train[1], raw_test[1]):
    bad = [v for v in labels if v not in (0, 1)]
    if bad:
      raise DataError(config.data_dir or "glue/sst2", f"unknown label {bad[0]}; expected 0 or 1")
  tok = lambda part: ([tokenize(s, opts.lowercase) for s in part[0]], part[1])  # noqa: E731
  return _splits("sst2", 2, opts, tok(raw_train), tok(raw_test))


def load_sst5(config: Any) -> DatasetSplits:
  opts = data_options(config, "sst5")
  paths = _find(config.data_dir, "trees", ("train.txt", "test.txt"),
                "the SST PTB trees trees/train.txt and trees/test.txt "
                "(trainDevTestTrees_PTB.zip)")
  parts = []
  for p in paths:
    words, labels = read_trees(p)
    parts.append(([[w.lower() for w in s] if opts.lowercase else s for s in words], labels))
  return _splits("sst5", 5, opts, parts[0], parts[1])
