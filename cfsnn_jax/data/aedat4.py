"""AEDAT4 files (iniVation DV; CIFAR10-DVS as tonic downloads it) through the ``aedat`` package.

Contract: ``read_aedat4(path) -> events.Events`` of the first event stream, as stored
(``x``, ``y``, ``p`` in {0, 1}, ``t`` in microseconds), decoded by ``aedat.Decoder`` (a
maintained compiled decoder of the flatbuffer + LZ4/zstd packets; optional extra
``pip install 'cfsnn_jax[aedat4]'``; without it, one ``UserError`` line naming the extra).
``check_aedat4(path)``: the ``#!AER-DAT4.0`` first line, the decoder's header parse, and
the packet sizes walked (seeking, not reading) up to the file data table whose position the
IOHeader gives, against the file size: the pass before training. Damaged files give one ``DataError`` line naming the file.
"""

from __future__ import annotations

import os
import struct

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


def _data_table_position(header: bytes) -> int:
  """Field 1 (``dataTablePosition``, int64, default -1) of the IOHeader flatbuffer table."""
  root = struct.unpack_from("<I", header, 0)[0]
  vtable = root - struct.unpack_from("<i", header, root)[0]
  vtable_size = struct.unpack_from("<H", header, vtable)[0]
  if vtable_size < 8:
    return -1
  field = struct.unpack_from("<H", header, vtable + 6)[0]
  return struct.unpack_from("<q", header, root + field)[0] if field else -1


def check_aedat4(path: str) -> None:
  """First line, the decoder's header parse, then the packet headers (``int32 stream,
  int32 size``) walked up to the file data table (or the end) against the file size."""
  _open(path)
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    f.seek(len(AEDAT4_MAGIC) + 2)  # "#!AER-DAT4.0\r\n"
    with decoding(path, "an AEDAT4 recording (size-prefixed IOHeader)"):
      (n,) = struct.unpack("<i", f.read(4))
      end = _data_table_position(f.read(n))
    pos = len(AEDAT4_MAGIC) + 2 + 4 + n
    if end >= size:
      raise DataError(path, f"truncated: the file data table is at byte {end}, the file has "
                      f"{size} bytes; expected a whole AEDAT4 recording")
    end = size if end < 0 else end
    while pos < end:
      f.seek(pos)
      head = f.read(8)
      if len(head) < 8:
        raise DataError(path, f"truncated packet header at byte {pos}; expected a whole "
                        "AEDAT4 recording")
      _, length = struct.unpack("<ii", head)
      pos += 8 + length
      if length < 0 or pos > end:
        raise DataError(path, f"truncated or corrupt packet ending at byte {pos}, the packets "
                        f"end at byte {end}; expected a whole AEDAT4 recording")


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
