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

The file is read by :class:`fedjax_mm.real.gguf_file.GGUFFile` (a fast
``struct`` header parser; tensors dequantized with ``gguf.quants.dequantize``).
Dequantizing the 135M-parameter SmolLM2 file takes 3.5-8 s of numpy on a busy
2-core CPU, so the converted float32 arrays are cached next to the GGUF
(:mod:`fedjax_mm.real.f32_cache`, keyed by the file's SHA-256). That one hash
per load also checks the pinned asset against its pin
(:func:`fedjax_mm.real.assets.verify`); a truncated file fails with one line
naming the file and the fix (not a ``struct.error``), and a damaged cache is
rebuilt (not a ``KeyError``).

References:
  Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", 2023;
  Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
  2021; Allal et al., "SmolLM2: When Smol Goes Big", 2025; the GGUF format
  specification (ggml-org/ggml, docs/gguf.md).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from fedjax_mm.real import assets, f32_cache
from fedjax_mm.real.gguf_file import GGUFFile, TensorInfo  # noqa: F401 (re-exported)

# Per-layer roles: our param name -> GGUF tensor role (blk.<i>.<role>.weight).
LAYER_TENSORS: dict[str, str] = {
    "attn_norm": "attn_norm", "q": "attn_q", "k": "attn_k", "v": "attn_v",
    "o": "attn_output", "mlp_norm": "ffn_norm", "gate": "ffn_gate", "up": "ffn_up",
    "down": "ffn_down",
}
_NORMS = ("attn_norm", "mlp_norm")

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


def flat_shapes(gf: GGUFFile, config: LlamaConfig) -> dict[str, tuple[int, ...]]:
  """The shapes :func:`_convert` gives every flat param of the whole file.

  Read from the tensor headers (not from ``config``), with the same transposes
  and layer stacking, so a cached folder can be checked against the file.
  """
  shape = lambda n: gf.tensors[n].shape
  out = {"token_embed": shape("token_embd.weight"), "final_norm": shape("output_norm.weight")}
  if not config.tie_embeddings:
    out["lm_head"] = shape("output.weight")[::-1]
  for name, role in LAYER_TENSORS.items():
    one = shape(f"blk.0.{role}.weight")
    out[f"layers/{name}"] = (config.num_layers, *(one if name in _NORMS else one[::-1]))
  return out


def cache_path(path: str | os.PathLike) -> Path:
  """Where the float32 cache of GGUF ``path`` lives (content-addressed folder)."""
  return f32_cache.path(path, assets.sha256(path))


def _cached(gf: GGUFFile, config: LlamaConfig, target: Path, k: int
            ) -> dict[str, np.ndarray] | None:
  """The cache's first ``k`` layers; ``None`` if absent or damaged (then removed)."""
  if not target.is_dir():
    return None
  try:
    return f32_cache.read(target, flat_shapes(gf, config), k)
  except f32_cache.DamagedCacheError as e:
    rebuild = ("rebuilding it from the GGUF" if k == config.num_layers
               else "the next full load (num_layers=None) rebuilds it")
    logging.warning("%s: damaged float32 cache (%s); removed it, %s", target, e, rebuild)
    shutil.rmtree(target, ignore_errors=True)
    return None


def load_gguf(source: str | os.PathLike | GGUFFile, num_layers: int | None = None,
              cache: bool = True) -> tuple[LlamaConfig, dict]:
  """Reads a Llama GGUF into ``(config, params)``.

  Args:
    source: the ``.gguf`` file (a path or an open :class:`GGUFFile`).
    num_layers: keep only the first ``num_layers`` blocks (a truncated model for
      fast tests); ``None`` keeps all. ``config`` always describes the file.
    cache: read/write the float32 cache next to the file (see
      :func:`cache_path`). Only full loads write it; truncated loads use it when
      present and otherwise dequantize just the layers they need. A damaged
      cache is logged, removed and rebuilt (by a full load).

  Returns:
    ``config`` and the param tree ``{"token_embed": {"embedding": [V, D]},
    "final_norm": [D], "layers": {name: [num_layers, ...]}}`` of float32 numpy
    arrays (apply it as ``{"params": params}``). Arrays read from the cache are
    read-only memory maps of it (full model) or copies (truncated layers).

  Raises:
    fedjax_mm.real.assets.DamagedFileError: the pinned asset's SHA-256 is not its
      pin, or the file is truncated (the message says how to re-fetch it).
  """
  gf = source if isinstance(source, GGUFFile) else GGUFFile(source)
  # One hash per load: the cache key, and the check of a pinned file's bytes
  # (first, so damaged metadata is reported as damage, not as a missing key).
  digest = assets.sha256(gf.path) if cache else None
  assets.verify(gf.path, digest)
  config = read_config(gf.metadata, set(gf.tensors))
  k = config.num_layers if num_layers is None else int(num_layers)
  if not 1 <= k <= config.num_layers:
    raise ValueError(f"num_layers must be in [1, {config.num_layers}], got {num_layers}")
  target = f32_cache.path(gf.path, digest) if cache else None
  if target is not None and (flat := _cached(gf, config, target, k)) is not None:
    return config, _nest(flat)
  flat = _convert(gf, config, k)
  if target is not None and k == config.num_layers:
    f32_cache.write(target, flat)
  return config, _nest(flat)
