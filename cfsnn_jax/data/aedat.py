"""Readers of the jAER / iniVation AEDAT 2.0 and AEDAT 3.1 event files.

Contract:
- ``read_aedat2(path) -> (timestamp_us uint32 [N], address uint32 [N])``. AEDAT 2.0 = ASCII
  header lines starting with ``#`` (the first is ``#!AER-DAT2.0``), then ``N`` big-endian
  pairs of 32-bit words ``(address, timestamp)``.
- ``dvs128_address(address) -> (x, y, p)``: the DVS128 address layout of those files: bit 0
  polarity, bits 1-7 ``x``, bits 8-14 ``y``.
- ``read_aedat31(path) -> events.Events`` of the polarity events. AEDAT 3.1 = ASCII header
  ``#!AER-DAT3.1`` ... ``#!END-HEADER``, then packets: a 28-byte little-endian header
  ``(int16 type, int16 source, int32 size, int32 ts_offset, int32 ts_overflow, int32
  capacity, int32 number, int32 valid)`` followed by ``capacity * size`` bytes of events.
  Packets of type 1 (polarity, 8 bytes each: ``uint32 data, int32 timestamp``) are decoded:
  ``valid = data & 1``, ``p = (data >> 1) & 1``, ``y = (data >> 2) & 0x7FFF``,
  ``x = (data >> 17) & 0x7FFF``, ``t = ts_overflow << 31 | timestamp``; of the first
  ``number`` events only those with the valid mark are kept. Other packet types are skipped.
A wrong first line, a missing end of header, a body that is not whole words or a truncated
packet raises one ``DataError`` line naming the file and what was expected.
``check_aedat2(path)`` / ``check_aedat31(path)`` find those errors from the header and the
file size alone (AEDAT 3.1: walking the packet headers), for the pass before training.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from cfsnn_jax.data.events import Events
from cfsnn_jax.data.sources import DataError, require_path

AEDAT2_MAGIC = b"#!AER-DAT2.0"
AEDAT31_MAGIC = b"#!AER-DAT3.1"
END_HEADER = b"#!END-HEADER"
POLARITY_EVENT = 1
_PACKET_HEADER = struct.Struct("<hhiiiiii")


def _split_header(data: bytes, path: str, magic: bytes, end_marker: bytes | None) -> int:
  """Returns the byte offset of the body after the ``#`` header lines."""
  first = data.split(b"\n", 1)[0].rstrip(b"\r")
  if not first.startswith(magic):
    raise DataError(path, f"corrupt header: expected first line {magic.decode()!r}, got "
                    f"{first[:40]!r}")
  pos = 0
  while pos < len(data) and data[pos:pos + 1] == b"#":
    nl = data.find(b"\n", pos)
    line = data[pos:len(data) if nl < 0 else nl].rstrip(b"\r")
    pos = len(data) if nl < 0 else nl + 1
    if end_marker is not None and line.startswith(end_marker):
      return pos
  if end_marker is not None:
    raise DataError(path, f"corrupt header: no {end_marker.decode()!r} line")
  return pos


def read_aedat2(path: str) -> tuple[np.ndarray, np.ndarray]:
  """``(timestamp_us, address)`` of an AEDAT 2.0 file (see module doc)."""
  require_path(path, "an AEDAT 2.0 recording")
  with open(path, "rb") as f:
    data = f.read()
  body = memoryview(data)[_split_header(data, path, AEDAT2_MAGIC, None):]
  if len(body) % 8:
    raise DataError(path, f"truncated: {len(body)} bytes after the header, expected a "
                    "multiple of 8 (big-endian address, timestamp pairs)")
  words = np.frombuffer(body, dtype=">u4").reshape(-1, 2)
  return words[:, 1].astype(np.uint32), words[:, 0].astype(np.uint32)


def dvs128_address(address: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(x, y, p)`` of DVS128 addresses: bit 0 polarity, bits 1-7 x, bits 8-14 y."""
  a = address.astype(np.int64)
  return (a >> 1) & 0x7F, (a >> 8) & 0x7F, a & 1


def read_aedat31(path: str) -> Events:
  """Polarity events of an AEDAT 3.1 file (see module doc)."""
  require_path(path, "an AEDAT 3.1 recording")
  with open(path, "rb") as f:
    data = f.read()
  pos = _split_header(data, path, AEDAT31_MAGIC, END_HEADER)
  parts: list[np.ndarray] = []
  while pos < len(data):
    if len(data) - pos < _PACKET_HEADER.size:
      raise DataError(path, f"truncated packet header at byte {pos}: "
                      f"{len(data) - pos} bytes, expected {_PACKET_HEADER.size}")
    (etype, _, esize, _, overflow, capacity, number, _) = _PACKET_HEADER.unpack_from(data, pos)
    pos += _PACKET_HEADER.size
    length = capacity * esize
    if esize < 0 or capacity < 0 or number > capacity or len(data) - pos < length:
      raise DataError(path, f"truncated or corrupt packet at byte {pos - _PACKET_HEADER.size}"
                      f": expected {length} event bytes, {len(data) - pos} left")
    if etype == POLARITY_EVENT:
      if esize != 8:
        raise DataError(path, f"polarity packet with event size {esize}, expected 8")
      ev = np.frombuffer(data, dtype="<u4", count=2 * number, offset=pos).reshape(-1, 2)
      ev = ev[(ev[:, 0] & 1) == 1]
      t = (np.int64(overflow) << 31) | ev[:, 1].astype(np.int64)
      parts.append(np.stack([t, ev[:, 0].astype(np.int64)]))
    pos += length
  if not parts:
    empty = np.zeros(0, np.int64)
    return Events(empty, empty, empty, empty)
  t, word = np.concatenate(parts, axis=1)
  return Events(t, (word >> 17) & 0x7FFF, (word >> 2) & 0x7FFF, (word >> 1) & 1)


HEADER_PROBE = 4096  # the ASCII header of these files is a few hundred bytes


def _read_head(path: str, expected: str) -> tuple[bytes, int]:
  """The first bytes of ``path``, enough to hold its whole ``#`` header, and its size."""
  require_path(path, expected)
  size = os.path.getsize(path)
  probe = HEADER_PROBE
  with open(path, "rb") as f:
    while True:
      f.seek(0)
      head = f.read(min(size, probe))
      last_line_start = head.rfind(b"\n") + 1
      if len(head) == size or head[last_line_start:last_line_start + 1] != b"#":
        return head, size  # the header ends inside what was read
      probe *= 4


def check_aedat2(path: str) -> None:
  """Header and size of an AEDAT 2.0 file (the body must be whole 8-byte words)."""
  head, size = _read_head(path, "an AEDAT 2.0 recording")
  pos = _split_header(head, path, AEDAT2_MAGIC, None)
  if (size - pos) % 8:
    raise DataError(path, f"truncated: {size - pos} bytes after the header, expected a "
                    "multiple of 8 (big-endian address, timestamp pairs)")


def check_aedat31(path: str) -> None:
  """Header of an AEDAT 3.1 file, then every packet header against the file size."""
  head, size = _read_head(path, "an AEDAT 3.1 recording")
  pos = _split_header(head, path, AEDAT31_MAGIC, END_HEADER)
  with open(path, "rb") as f:
    while pos < size:
      if size - pos < _PACKET_HEADER.size:
        raise DataError(path, f"truncated packet header at byte {pos}: {size - pos} bytes, "
                        f"expected {_PACKET_HEADER.size}")
      f.seek(pos)
      (_, _, esize, _, _, capacity, number, _) = _PACKET_HEADER.unpack(
          f.read(_PACKET_HEADER.size))
      length = capacity * esize
      left = size - pos - _PACKET_HEADER.size
      if esize < 0 or capacity < 0 or number > capacity or left < length:
        raise DataError(path, f"truncated or corrupt packet at byte {pos}: expected {length} "
                        f"event bytes, {left} left")
      pos += _PACKET_HEADER.size + length
