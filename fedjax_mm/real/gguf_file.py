"""A GGUF file's header, parsed with ``struct``, and its tensors, dequantized.

GGUF (llama.cpp's container format, GGUF v2/v3, little-endian) is a header of
typed key/value metadata and tensor entries (name, dims fastest-first, quant
type, offset), then aligned tensor data. ``gguf.GGUFReader`` builds a numpy
memmap view per metadata element, which takes 10-20 s for SmolLM2's ~100k
vocabulary/merge strings on a busy CPU; :class:`GGUFFile` parses the header in
~0.1 s and leaves dequantization to ``gguf.quants.dequantize``.

Every read is bounds-checked, so a truncated or damaged file fails with one line
naming it and the fix (:func:`fedjax_mm.real.assets.damaged`), not with a
``struct.error`` or a numpy buffer message.

Reference: the GGUF format specification (ggml-org/ggml, docs/gguf.md).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_mm.real import assets

# GGUF metadata value types (spec order) -> struct format of a scalar.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """One tensor's entry in the GGUF header.

  Attributes:
    shape: numpy (row-major) shape, i.e. GGUF's fastest-first dims reversed.
    qtype: ``gguf.GGMLQuantizationType`` value.
    offset: absolute byte offset of the data in the file.
  """
  shape: tuple[int, ...]
  qtype: int
  offset: int


class GGUFFile:
  """A GGUF file's metadata and lazily dequantized tensors (memory-mapped).

  Raises (on construction):
    fedjax_mm.real.assets.DamagedFileError: not a GGUF v2/v3 file, or its
      header is truncated or damaged (the message names the file and the fix).

  Attributes:
    metadata: key -> value (str, int, float, bool, or a list/array thereof).
    tensors: tensor name -> :class:`TensorInfo`.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    with open(self.path, "rb") as f:
      if os.fstat(f.fileno()).st_size < 8:       # mmap refuses an empty file
        raise assets.damaged(path, "truncated: shorter than a GGUF magic and version")
      self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    self._pos = 0
    magic, version = self._read("<4sI")
    if magic != b"GGUF" or version not in (2, 3):
      raise assets.damaged(path, f"not a little-endian GGUF v2/v3 file (magic {magic!r}, "
                           f"version {version})")
    try:
      self._parse_header()
    except (EOFError, UnicodeDecodeError, KeyError) as e:
      raise assets.damaged(path, f"damaged or truncated GGUF header ({e})") from e

  def _parse_header(self) -> None:
    n_tensors, n_kv = self._read("<QQ")
    self.metadata: dict[str, Any] = {}
    for _ in range(n_kv):
      key = self._string()
      self.metadata[key] = self._value(self._read("<I")[0])
    infos = []
    for _ in range(n_tensors):
      name = self._string()
      n_dims = self._read("<I")[0]
      dims = self._read(f"<{n_dims}Q")
      qtype, offset = self._read("<IQ")
      infos.append((name, tuple(reversed(dims)), qtype, offset))
    align = int(self.metadata.get("general.alignment", 32))
    data_start = -(-self._pos // align) * align
    self.tensors = {name: TensorInfo(shape, qtype, data_start + offset)
                    for name, shape, qtype, offset in infos}

  def _advance(self, n: int) -> int:
    """Claims the next ``n`` bytes; returns their start (EOFError past the end)."""
    start, size = self._pos, len(self._buf)
    if start + n > size:
      raise EOFError(f"needs {n} bytes at offset {start}, the file has {size}")
    self._pos += n
    return start

  def _read(self, fmt: str) -> tuple:
    return struct.unpack_from(fmt, self._buf, self._advance(struct.calcsize(fmt)))

  def _string(self) -> str:
    (n,) = self._read("<Q")
    start = self._advance(n)
    return self._buf[start:start + n].decode("utf-8")

  def _value(self, kind: int) -> Any:
    if kind == _STRING:
      return self._string()
    if kind == _ARRAY:
      elem, count = self._read("<IQ")
      if elem in _SCALARS:  # numeric arrays in one vectorized read
        dtype = np.dtype(_SCALARS[elem])
        return np.frombuffer(self._buf, dtype, count, self._advance(count * dtype.itemsize)
                             ).copy()
      return [self._value(elem) for _ in range(count)]
    return self._read(_SCALARS[kind])[0]

  def dequantize(self, name: str) -> np.ndarray:
    """Tensor ``name`` as a fresh float32 array of its numpy shape."""
    import gguf  # pylint: disable=g-import-not-at-top (optional dependency)
    info = self.tensors[name]
    qtype = gguf.GGMLQuantizationType(info.qtype)
    byte_shape = gguf.quants.quant_shape_to_byte_shape(info.shape, qtype)
    n = int(np.prod(byte_shape))
    if info.offset + n > len(self._buf):
      raise assets.damaged(self.path, f"truncated: tensor {name} needs bytes up to "
                           f"{info.offset + n}, the file has {len(self._buf)}")
    raw = np.frombuffer(self._buf, np.uint8, n, info.offset)
    out = np.array(gguf.quants.dequantize(raw.reshape(byte_shape), qtype), np.float32)
    del raw  # release the buffer export
    return out
