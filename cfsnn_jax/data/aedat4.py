"""AEDAT4 files (iniVation DV; CIFAR10-DVS as tonic downloads it) through the ``aedat`` package.

Contract: ``read_aedat4(path) -> events.Events`` of the first event stream, as stored
(``x``, ``y``, ``p`` in {0, 1}, ``t`` in microseconds), decoded by ``aedat.Decoder`` (a
maintained compiled decoder of the flatbuffer + LZ4/zstd packets; optional extra
``pip install 'cfsnn_jax[aedat4]'``; without it, one ``UserError`` line naming the extra).
``check_aedat4(path)``: the ``#!AER-DAT4.0`` first line and the decoder's header parse, for
the pass before training. Damaged files give one ``DataError`` line naming the file.
"""

from __future__ import annotations

import numpy as np

from cfsnn_jax.data.events import Events
from cfsnn_jax.data.sources import DataError, decoding, require_path
from cfsnn_jax.errors import UserError

AEDAT4_MAGIC = b"#!AER-DAT4.0"
EXTRA = "aedat4"


def _decoder_module():
  try:
    import aedat
  except ImportError:
    raise UserError(f"reading AEDAT4 recordings needs the optional decoder: pip install "
                    f"'cfsnn_jax[{EXTRA}]' (the aedat package)") from None
  return aedat


def _open(path: str):
  require_path(path, "an AEDAT4 recording")
  with open(path, "rb") as f:
    first = f.read(len(AEDAT4_MAGIC))
  if first != AEDAT4_MAGIC:
    raise DataError(path, f"corrupt header: expected first line {AEDAT4_MAGIC.decode()!r}, got "
                    f"{first!r}")
  aedat = _decoder_module()
  with decoding(path, "an AEDAT4 recording"):
    decoder = aedat.Decoder(path)
    streams = decoder.id_to_stream()
  ids = sorted(i for i, s in streams.items() if s.get("type") == "events")
  if not ids:
    raise DataError(path, f"no event stream (streams: {streams}); expected DVS events")
  return decoder, ids[0]


def check_aedat4(path: str) -> None:
  _open(path)


def read_aedat4(path: str) -> Events:
  """Events of the first event stream (see module doc)."""
  decoder, stream = _open(path)
  parts = []
  with decoding(path, "an AEDAT4 recording"):
    for packet in decoder:
      if packet["stream_id"] == stream and "events" in packet:
        parts.append(packet["events"])
  if not parts:
    empty = np.zeros(0, np.int64)
    return Events(empty, empty, empty, empty)
  ev = np.concatenate(parts)
  return Events(ev["t"].astype(np.int64), ev["x"].astype(np.int64), ev["y"].astype(np.int64),
                ev["p"].astype(np.int64))
