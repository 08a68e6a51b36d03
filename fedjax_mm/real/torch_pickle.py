"""A torch-free reader for legacy (non-zip) ``torch.save`` files.

``torch.save`` before PyTorch 1.6 (and ``_use_new_zipfile_serialization=False``
after) writes one stream of consecutive pickles followed by raw tensor data:

1. the magic number ``0x1950a86a20f9469cfc6c`` (a pickled ``int``);
2. the protocol version ``1001``;
3. system info, ``{"protocol_version": 1001, "little_endian": bool,
   "type_sizes": {...}}``;
4. the object itself (here an ``OrderedDict`` state dict). Each tensor is pickled
   as ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
   requires_grad, backward_hooks[, metadata])`` and its storage as a *persistent
   id* ``("storage", <torch.FloatStorage etc.>, key, location, numel,
   view_metadata)``, where ``view_metadata`` is ``None`` or ``(view_key, offset,
   view_numel)`` for a storage that is a slice of storage ``key``;
5. a pickled list of the storage keys, in the order their data follows;
6. for each key: an 8-byte little-endian element count, then that many elements
   as raw bytes in the byte order of step 3.

:func:`load` replays this with :class:`pickle.Unpickler`, but ``find_class`` only
resolves an explicit whitelist (``collections.OrderedDict``, the two torch
rebuild functions and the storage types), to inert stand-ins: a file naming any
other global (``os.system``, ``builtins.eval``...) raises
:class:`UnsafePickleError` before anything runs. The stand-ins are created
afresh for each pickle and refuse ``BUILD`` (``__setstate__``): a crafted file
can neither give them state nor alter what a later load sees. Tensors become
NumPy arrays (copies, C-contiguous, honouring storage offsets and strides). A
truncated or damaged file raises :class:`fedjax_mm.real.assets.DamagedFileError`
(one line: the file and the fix), not a bare ``EOFError``/``struct.error``.

Reference: PyTorch ``torch/serialization.py`` (``_legacy_save``/``_legacy_load``),
the format's only specification.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from fedjax_mm.real import assets

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> element dtype (byte order is fixed from sys info).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}


class UnsafePickleError(pickle.UnpicklingError):
  """The file references a global outside the whitelist, or gives a stand-in state."""


class _Stateless:
  """Refuses pickle's ``BUILD``: the unpickler calls ``__setstate__`` with the state."""

  def __setstate__(self, state: Any) -> None:
    raise UnsafePickleError(
        f"refusing BUILD (setstate) on {type(self).__name__}, got state {state!r:.80}: "
        "a legacy torch state dict never gives its storages, rebuild functions or "
        "tensors state")


class _StorageType(_Stateless):
  """Stand-in for ``torch.<Name>Storage``: only carries the dtype."""

  def __init__(self, name: str):
    self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Rebuild(_Stateless):
  """Stand-in for a torch rebuild function: calls ``fn``, holds no state."""

  def __init__(self, fn: Any):
    self._fn = fn

  def __call__(self, *args: Any) -> Any:
    return self._fn(*args)


class _TensorRef(_Stateless):
  """A tensor whose storage bytes have not been read yet."""

  def __init__(self, storage: tuple[str, int], offset: int, size: tuple[int, ...],
               stride: tuple[int, ...]):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _TensorRef:
  del requires_grad, backward_hooks, metadata    # inference only: no autograd state
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _TensorRef, requires_grad=False, backward_hooks=None) -> _TensorRef:
  del requires_grad, backward_hooks              # an nn.Parameter is just its tensor here
  return data


def _whitelist() -> dict[tuple[str, str], Any]:
  """The globals a state dict may name -> fresh stand-ins (one set per pickle).

  ``OrderedDict`` is the real class: an immutable built-in type, which ``BUILD``
  cannot alter, whose instances are new per load anyway.
  """
  return {("collections", "OrderedDict"): collections.OrderedDict,
          ("torch._utils", "_rebuild_tensor_v2"): _Rebuild(_rebuild_tensor_v2),
          ("torch._utils", "_rebuild_parameter"): _Rebuild(_rebuild_parameter),
          **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES}}


class _Unpickler(pickle.Unpickler):
  """Resolves only whitelisted globals; records the storages tensors refer to."""

  def __init__(self, file: BinaryIO):
    super().__init__(file)
    self.storages: dict[str, tuple[np.dtype, int]] = {}   # key -> (dtype, numel)
    self._globals = _whitelist()

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in self._globals:
      raise UnsafePickleError(
          f"refusing to unpickle global {module}.{name}: a legacy torch state dict "
          f"only needs {sorted('.'.join(k) for k in self._globals)}")
    return self._globals[(module, name)]

  def persistent_load(self, pid: Any) -> tuple[str, int]:
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    _, storage_type, key, _location, numel, view = pid
    self.storages.setdefault(key, (storage_type.dtype, int(numel)))
    if view is None:
      return key, 0
    _view_key, view_offset, _view_numel = view   # a slice of storage `key`
    return key, int(view_offset)


def _read_exactly(f: BinaryIO, n: int, what: str) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise EOFError(f"{what}: needs {n} bytes, the file has {len(data)} left")
  return data


def _read_storage(f: BinaryIO, dtype: np.dtype, numel: int, key: str) -> np.ndarray:
  (count,) = struct.unpack("<q", _read_exactly(f, 8, f"storage {key} header"))
  if count != numel:
    raise ValueError(f"storage {key}: header says {count} elements, pickle said {numel}")
  return np.frombuffer(_read_exactly(f, count * dtype.itemsize, f"storage {key}"), dtype)


def _read_stream(f: BinaryIO) -> tuple[Any, dict[str, np.ndarray]]:
  """The unpickled object and the raw storages (key -> 1-D array), in file order."""
  header = _Unpickler(f)        # the header pickles hold plain ints and dicts
  if header.load() != MAGIC_NUMBER:
    raise ValueError("not a legacy torch file (bad magic number)")
  if (version := header.load()) != PROTOCOL_VERSION:
    raise ValueError(f"unsupported protocol version {version}")
  if not isinstance(info := header.load(), dict):
    raise ValueError(f"system info is a {type(info).__name__}, not a dict")
  byteorder = "<" if info.get("little_endian", True) else ">"
  unpickler = _Unpickler(f)
  obj = unpickler.load()
  raw = {}
  for key in _Unpickler(f).load():
    dtype, numel = unpickler.storages[key]
    raw[key] = _read_storage(f, dtype.newbyteorder(byteorder), numel, key)
  return obj, raw


def load(path: str | Path) -> collections.OrderedDict[str, np.ndarray]:
  """Reads a legacy ``torch.save`` file of a flat state dict.

  Args:
    path: the ``.pth``/``.pt`` file.

  Returns:
    ``OrderedDict`` name -> NumPy array (file order).

  Raises:
    UnsafePickleError: the file names a global outside the whitelist, or gives
      a stand-in state (``BUILD``).
    fedjax_mm.real.assets.DamagedFileError: truncated or unreadable pickles or
      storages, bad magic/protocol, a tensor view outside its storage (one
      line: the file, the cause and how to replace the file).
    ValueError: a zip-format file.
  """
  with open(path, "rb") as f:
    if f.read(2) == b"PK":
      raise ValueError(f"{path} is a zip-format (torch>=1.6) checkpoint; this reader "
                       "handles only the legacy format")
    f.seek(0)
    try:
      obj, raw = _read_stream(f)
    except UnsafePickleError:
      raise
    except (EOFError, pickle.UnpicklingError, ValueError, KeyError, TypeError) as e:
      # What cut or overwritten bytes raise (ValueError includes UnicodeDecodeError).
      raise assets.damaged(path, f"truncated or damaged legacy torch file "
                           f"({type(e).__name__}: {e})") from e

  def materialize(ref: _TensorRef) -> np.ndarray:
    (key, view_offset), storage = ref.storage, raw[ref.storage[0]]
    start = view_offset + ref.offset
    if ref.size and any(s > 0 for s in ref.size):
      last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
      if start < 0 or last >= storage.size:
        raise assets.damaged(path, f"tensor view out of bounds of storage {key}")
    view = np.lib.stride_tricks.as_strided(
        storage[start:], ref.size, [s * storage.itemsize for s in ref.stride])
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")   # own native copy

  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
  out = collections.OrderedDict()
  for name, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise ValueError(f"{path}: entry {name!r} is {type(value).__name__}, not a tensor")
    out[name] = materialize(value)
  return out
