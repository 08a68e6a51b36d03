"""Reads a Llama-architecture GGUF file into a config and stacked float32 params.

GGUF (llama.cpp's container format) stores hyper-parameters as typed metadata
(``llama.block_count``, ``llama.rope.freq_base``, ...) and each weight as a
(possibly block-quantized) tensor named ``blk.<i>.<role>.weight``. This module
turns one such file into

* a :class:`LlamaConfig` read entirely from the metadata, and
* a plain-dict pytree of float32 numpy arrays in the layout
  :class:`fedjax_mm.real.smollm.Llama` declares: dense kernels are ``[in, out]``
  (``y = x @ W``), and every per-layer weight is STACKED along a leading layer
  axis so the model scans over layers (compile time O(1) in depth).

Layout conversions (all exact, pure re-indexing):

* GGUF lists dims fastest-first; after :func:`gguf.quants.dequantize` a matrix
  comes out as PyTorch's ``[out, in]`` and is transposed here.
* llama.cpp's HF converter permutes the rows of the query/key projections within
  each head so that rotary embedding pairs adjacent dims ``(2i, 2i+1)`` (GPT-J
  style). We undo that permutation, so the params are in HF's "rotate-half"
  layout (pairs ``(i, i + d/2)``) and the model applies rotate-half RoPE. Both
  layouts give identical attention scores; rotate-half keeps the params
  interchangeable with HF Llama checkpoints. (The golden reference,
  ``scripts/make_smollm2_golden.py``, deliberately uses the other layout.)

The header is parsed by :class:`GGUFFile` (``gguf.GGUFReader`` spends 10-20 s
building per-string views of the vocabulary); tensors are dequantized with
``gguf.quants.dequantize``. Dequantizing the 135M-parameter SmolLM2 file takes
3.5-8 s of numpy on a busy 2-core CPU, so the converted float32 arrays are
cached next to the GGUF as a folder of ``.npy`` files (memory-mapped on load:
~0.05 s, where reading one 540 MB ``.npz`` took 1-3 s), keyed by the file's
SHA-256, size and :data:`_CACHE_VERSION` (bump it when the layout changes).

References:
  Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", 2023;
  Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
  2021; Allal et al., "SmolLM2: When Smol Goes Big", 2025; the GGUF format
  specification (ggml-org/ggml, docs/gguf.md).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_mm.real import assets

# Bump when the array layout written to the cache changes.
_CACHE_VERSION = 1

# Per-layer roles: our param name -> GGUF tensor role (blk.<i>.<role>.weight).
LAYER_TENSORS: dict[str, str] = {
    "attn_norm": "attn_norm", "q": "attn_q", "k": "attn_k", "v": "attn_v",
    "o": "attn_output", "mlp_norm": "ffn_norm", "gate": "ffn_gate", "up": "ffn_up",
    "down": "ffn_down",
}
_NORMS = ("attn_norm", "mlp_norm")

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
  """A GGUF file's metadata and lazily dequantized tensors.

  ``gguf.GGUFReader`` builds a numpy memmap view per metadata element, which
  takes 10-20 s for SmolLM2's ~100k vocabulary/merge strings on a busy CPU;
  this parses the header (GGUF v2/v3, little-endian) with ``struct`` in ~0.1 s
  and leaves dequantization to ``gguf.quants.dequantize``.

  Attributes:
    metadata: key -> value (str, int, float, bool, or a list/array thereof).
    tensors: tensor name -> :class:`TensorInfo`.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    with open(self.path, "rb") as f:
      self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    self._pos = 0
    magic, version = self._read("<4sI")
    if magic != b"GGUF" or version not in (2, 3):
      raise ValueError(f"{path}: not a little-endian GGUF v2/v3 file")
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

  def _read(self, fmt: str) -> tuple:
    out = struct.unpack_from(fmt, self._buf, self._pos)
    self._pos += struct.calcsize(fmt)
    return out

  def _string(self) -> str:
    (n,) = self._read("<Q")
    self._pos += n
    return self._buf[self._pos - n:self._pos].decode("utf-8")

  def _value(self, kind: int) -> Any:
    if kind == _STRING:
      return self._string()
    if kind == _ARRAY:
      elem, count = self._read("<IQ")
      if elem in _SCALARS:  # numeric arrays in one vectorized read
        dtype = np.dtype(_SCALARS[elem])
        out = np.frombuffer(self._buf, dtype, count, self._pos).copy()
        self._pos += count * dtype.itemsize
        return out
      return [self._value(elem) for _ in range(count)]
    return self._read(_SCALARS[kind])[0]

  def dequantize(self, name: str) -> np.ndarray:
    """Tensor ``name`` as a fresh float32 array of its numpy shape."""
    import gguf  # pylint: disable=g-import-not-at-top (optional dependency)
    info = self.tensors[name]
    qtype = gguf.GGMLQuantizationType(info.qtype)
    byte_shape = gguf.quants.quant_shape_to_byte_shape(info.shape, qtype)
    raw = np.frombuffer(self._buf, np.uint8, int(np.prod(byte_shape)), info.offset)
    out = np.array(gguf.quants.dequantize(raw.reshape(byte_shape), qtype), np.float32)
    del raw  # release the buffer export
    return out


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Llama hyper-parameters (all read from GGUF metadata by :func:`read_config`).

  Attributes:
    vocab_size: number of tokens (rows of the tied embedding).
    width: model width ``D``.
    num_layers: decoder blocks in the file.
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention; divides num_heads).
    head_dim: per-head width.
    mlp_dim: SwiGLU hidden width.
    rms_eps: RMSNorm epsilon.
    rope_base: RoPE frequency base.
    rope_dim: rotated dims per head (== head_dim for SmolLM2).
    context_length: trained context length (informational).
    tie_embeddings: output logits use the token embedding (no ``output.weight``).
  """
  vocab_size: int
  width: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rms_eps: float
  rope_base: float
  rope_dim: int
  context_length: int
  tie_embeddings: bool = True


def read_config(meta: dict[str, Any], tensor_names: set[str] | None = None) -> LlamaConfig:
  """Builds the :class:`LlamaConfig` from GGUF metadata (and tensor names)."""
  if meta.get("general.architecture") != "llama":
    raise ValueError(f"expected a llama GGUF, got {meta.get('general.architecture')!r}")
  width = int(meta["llama.embedding_length"])
  heads = int(meta["llama.attention.head_count"])
  head_dim = width // heads
  vocab = meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
  return LlamaConfig(
      vocab_size=int(vocab), width=width,
      num_layers=int(meta["llama.block_count"]),
      num_heads=heads,
      num_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
      head_dim=head_dim,
      mlp_dim=int(meta["llama.feed_forward_length"]),
      rms_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
      rope_base=float(meta.get("llama.rope.freq_base", 10000.0)),
      rope_dim=int(meta.get("llama.rope.dimension_count", head_dim)),
      context_length=int(meta.get("llama.context_length", 2048)),
      tie_embeddings=tensor_names is None or "output.weight" not in tensor_names)


def unpermute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation (``[out, in]`` matrix).

  The converter maps HF row ``h*d + j*d/2 + i`` to GGUF row ``h*d + 2i + j``
  (``d`` = head dim, ``j`` in {0, 1}); this maps it back.
  """
  out, fan_in = w.shape
  d = out // n_heads
  return w.reshape(n_heads, d // 2, 2, fan_in).swapaxes(1, 2).reshape(out, fan_in)


def _convert(gf: GGUFFile, config: LlamaConfig, num_layers: int) -> dict[str, np.ndarray]:
  """Dequantizes and re-lays-out the first ``num_layers`` layers (flat dict)."""
  flat = {"token_embed": gf.dequantize("token_embd.weight"),
          "final_norm": gf.dequantize("output_norm.weight")}
  if not config.tie_embeddings:
    flat["lm_head"] = np.ascontiguousarray(gf.dequantize("output.weight").T)
  for name, role in LAYER_TENSORS.items():
    per_layer = []
    for i in range(num_layers):
      w = gf.dequantize(f"blk.{i}.{role}.weight")
      if name == "q":
        w = unpermute_rotary_rows(w, config.num_heads)
      elif name == "k":
        w = unpermute_rotary_rows(w, config.num_kv_heads)
      per_layer.append(w if name in _NORMS else w.T)  # [out, in] -> [in, out]
    flat[f"layers/{name}"] = np.ascontiguousarray(np.stack(per_layer))
  return flat


def _nest(flat: dict[str, np.ndarray]) -> dict:
  """``{"layers/q": a, ...}`` -> the module's param tree."""
  params: dict = {"token_embed": {"embedding": flat["token_embed"]},
                  "final_norm": flat["final_norm"],
                  "layers": {name: flat[f"layers/{name}"] for name in LAYER_TENSORS}}
  if "lm_head" in flat:
    params["lm_head"] = flat["lm_head"]
  return params


def cache_path(path: str | os.PathLike) -> Path:
  """Where the float32 cache of GGUF ``path`` lives (content-addressed folder)."""
  path = Path(path)
  key = f"{assets.sha256(path)[:16]}-{path.stat().st_size}-v{_CACHE_VERSION}"
  return path.with_name(f"{path.stem}.{key}.f32")


def _write_cache(target: Path, flat: dict[str, np.ndarray]) -> None:
  # Fill a temp folder, then rename it: a killed process never leaves a partial
  # cache, and of concurrent writers (pytest-xdist) the first rename wins.
  tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
  try:
    for name, array in flat.items():
      np.save(tmp / f"{name.replace('/', '.')}.npy", array)
    os.replace(tmp, target)
  except OSError:
    if not target.is_dir():
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(target: Path, num_layers: int) -> dict[str, np.ndarray]:
  # Memory-mapped: the full model "loads" in milliseconds from the page cache.
  flat = {}
  for file in target.glob("*.npy"):
    name = file.stem.replace(".", "/")
    array = np.load(file, mmap_mode="r")
    flat[name] = (np.ascontiguousarray(array[:num_layers]) if name.startswith("layers/")
                  else np.asarray(array))
  return flat


def load_gguf(source: str | os.PathLike | GGUFFile, num_layers: int | None = None,
              cache: bool = True) -> tuple[LlamaConfig, dict]:
  """Reads a Llama GGUF into ``(config, params)``.

  Args:
    source: the ``.gguf`` file (a path or an open :class:`GGUFFile`).
    num_layers: keep only the first ``num_layers`` blocks (a truncated model for
      fast tests); ``None`` keeps all. ``config`` always describes the file.
    cache: read/write the float32 cache next to the file (see
      :func:`cache_path`). Only full loads write it; truncated loads use it when
      present and otherwise dequantize just the layers they need.

  Returns:
    ``config`` and the param tree ``{"token_embed": {"embedding": [V, D]},
    "final_norm": [D], "layers": {name: [num_layers, ...]}}`` of float32 numpy
    arrays (apply it as ``{"params": params}``). Arrays read from the cache are
    read-only memory maps of it (full model) or copies (truncated layers).
  """
  gf = source if isinstance(source, GGUFFile) else GGUFFile(source)
  config = read_config(gf.metadata, set(gf.tensors))
  k = config.num_layers if num_layers is None else int(num_layers)
  if not 1 <= k <= config.num_layers:
    raise ValueError(f"num_layers must be in [1, {config.num_layers}], got {num_layers}")
  target = cache_path(gf.path) if cache else None
  if target is not None and target.is_dir():
    return config, _nest(_read_cache(target, k))
  flat = _convert(gf, config, k)
  if target is not None and k == config.num_layers:
    _write_cache(target, flat)
  return config, _nest(flat)
