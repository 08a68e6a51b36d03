"""Tiny on-disk sources for the real-data builders and loaders, shared by the real tests.

Writers only (no pytest fixtures): a Tux Paint stamps tree in the package's
layout, Fashion-MNIST IDX files, a tiny Llama GGUF and legacy torch files, small enough to build in
well under a second, so no test reads the apt files under /usr/share or the
network.
"""

from __future__ import annotations

import collections
import gzip
import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from fedjax_mm.real import torch_pickle

# A tiny Llama: width 8, 2 query heads of 4, 1 kv head, SwiGLU width 16, vocab 4.
TINY_LLAMA = {"width": 8, "heads": 2, "kv_heads": 1, "mlp": 16, "vocab": 4}

# The real layout: <category>/<...>/<name>.png next to <name>.txt whose first line
# is English, the others translations. Paths chosen so the 10% hash split has both.
STAMPS = {"animals/birds/blackbird.png": ("RGBA", "A blackbird."),
          "food/fruit/cherimoya.png": ("RGB", "A cherimoya fruit."),
          "animals/hen.png": ("P", "A hen.")}


def write_stamp(root: Path, rel: str, mode: str, caption: str) -> None:
  path = root / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  path.with_suffix(".txt").write_text(f"{caption}\nfr.utf8=Traduction.\nde.utf8=X.\n",
                                      encoding="utf-8")
  # 8 wide, 4 high: left half opaque red, right half transparent *black*.
  rgba = np.zeros((4, 8, 4), np.uint8)
  rgba[:, :4] = (255, 0, 0, 255)
  image, options = Image.fromarray(rgba, "RGBA"), {}
  if mode == "RGB":
    image = image.convert("RGB")  # no alpha: the black half stays black
  elif mode == "P":  # a palette whose black entry is marked transparent
    image = image.convert("RGB").quantize(colors=2)
    options["transparency"] = int(np.asarray(image)[0, 7])
  image.save(path, **options)


def write_stamps(root: Path) -> Path:
  """:data:`STAMPS` (2 train, 1 test) plus three files the builder must skip."""
  for rel, (mode, caption) in STAMPS.items():
    write_stamp(root, rel, mode, caption)
  write_stamp(root, "symbols/math/plus.png", "RGBA", "A plus sign.")  # skipped
  (root / "plants").mkdir()
  (root / "plants/tree.svg").write_text("<svg/>")  # SVG only: skipped
  (root / "plants/tree.txt").write_text("A tree.\n")
  (root / "animals/birds/blackbird_mirror.png").write_bytes(
      (root / "animals/birds/blackbird.png").read_bytes())  # no .txt: not a stamp
  return root


def idx(array: np.ndarray, type_code: int) -> bytes:
  """``array`` in the IDX format (MNIST's): header, big-endian dims and data."""
  header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion(root: Path, splits: dict[str, tuple[np.ndarray, Sequence[int]]]) -> Path:
  """Fashion-MNIST IDX files: ``{"train" | "t10k": (uint8 [N, 28, 28], labels)}``.

  The train files are gzipped and the test files plain, as both occur; each
  split's images are also saved as ``<stem>.npy`` for comparisons.
  """
  for stem, (images, labels) in splits.items():
    files = {f"{stem}-images-idx3-ubyte": idx(np.asarray(images, np.uint8), 0x08),
             f"{stem}-labels-idx1-ubyte": idx(np.asarray(labels, np.uint8), 0x08)}
    for name, data in files.items():
      if stem == "train":
        (root / f"{name}.gz").write_bytes(gzip.compress(data))
      else:
        (root / name).write_bytes(data)
    np.save(root / f"{stem}.npy", images)
  return root


def write_tiny_gguf(path: Path, num_layers: int = 2, seed: int = 0) -> Path:
  """A float32 Llama GGUF of :data:`TINY_LLAMA` sizes (3-6 KB), written by ``gguf``.

  Float32 tensors dequantize exactly, so a load can be compared bit for bit
  with the arrays written; their values are N(0, 1) draws of ``seed``.
  """
  import gguf  # pylint: disable=g-import-not-at-top (optional dependency)
  t = TINY_LLAMA
  d, kv = t["width"], t["kv_heads"] * t["width"] // t["heads"]
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(num_layers)
  writer.add_embedding_length(d)
  writer.add_head_count(t["heads"])
  writer.add_head_count_kv(t["kv_heads"])
  writer.add_feed_forward_length(t["mlp"])
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_context_length(32)
  writer.add_vocab_size(t["vocab"])
  rng = np.random.default_rng(seed)
  add = lambda name, shape: writer.add_tensor(name, rng.normal(size=shape).astype(np.float32))
  add("token_embd.weight", (t["vocab"], d))
  add("output_norm.weight", (d,))
  shapes = {"attn_norm": (d,), "attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d),
            "attn_output": (d, d), "ffn_norm": (d,), "ffn_gate": (t["mlp"], d),
            "ffn_up": (t["mlp"], d), "ffn_down": (d, t["mlp"])}  # GGUF rows = [out, in]
  for i in range(num_layers):
    for role, shape in shapes.items():
      add(f"blk.{i}.{role}.weight", shape)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


# --- a hand-built legacy torch file, written without torch ---------------------


class _Global:
  """Pickled as the bare global ``module.name`` (torch is not importable here)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):          # pickle only accepts callables as reducers
    raise AssertionError("never called")


class Storage:
  """A torch storage: ``data`` pickled as a persistent id of type ``type_name``."""

  def __init__(self, key: str, data: np.ndarray, type_name: str):
    self.key, self.data, self.type_name = key, data, type_name


class Tensor:
  """A view of ``storage``, pickled as ``_rebuild_tensor_v2(...)``; a ``state`` adds BUILD."""

  def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple,
               state: dict | None = None):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
    self.state = state


class LegacyPickler(pickle._Pickler):   # the pure-Python pickler lets us emit raw GLOBALs
  """Pickles :class:`Storage` and :class:`Tensor` as ``torch.save`` (legacy) does."""

  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[_Global] = lambda self, obj: self.write(
      pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  def persistent_id(self, obj):
    if isinstance(obj, Storage):
      return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.data.size, None)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, Tensor):
      args = (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict())
      return (_Global("torch._utils", "_rebuild_tensor_v2"), args,
              *(() if obj.state is None else (obj.state,)))   # a third item pickles as BUILD
    return NotImplemented


def legacy_header() -> bytes:
  """The three header pickles: magic number, protocol version, system info."""
  return b"".join(pickle.dumps(h, protocol=2) for h in (
      torch_pickle.MAGIC_NUMBER, torch_pickle.PROTOCOL_VERSION,
      {"protocol_version": 1001, "little_endian": True,
       "type_sizes": {"short": 2, "int": 4, "long": 4}}))


def write_legacy(path, state: dict, storages: list[Storage]) -> None:
  """A legacy ``torch.save`` file of ``state`` whose tensors use ``storages``."""
  with open(path, "wb") as f:
    f.write(legacy_header())
    LegacyPickler(f, protocol=2).dump(state)
    pickle.dump([s.key for s in storages], f, protocol=2)
    for s in storages:
      little = s.data.astype(s.data.dtype.newbyteorder("<"))
      f.write(struct.pack("<q", s.data.size) + little.tobytes())
