"""SmolLM2-135M (a Llama decoder) in Flax, loaded from a GGUF file.

:class:`Llama` has the entry points of the project's small
:class:`fedjax_mm.models.language.CausalLM`, so Fed-MA code can use either:

* :meth:`Llama.embed`: token ids ``[B, L]`` -> embeddings ``[B, L, D]``;
* :meth:`Llama.forward_embeddings`: embeddings ``[B, T, D]`` ->
  ``(logits [B, T, V] float32, hidden [B, T, D])``;
* :meth:`Llama.__call__`: token ids -> logits.

Architecture (every size read from the GGUF metadata, see
:class:`~fedjax_mm.real.gguf_reader.LlamaConfig`): pre-norm blocks
``h + Attn(RMSNorm(h))`` then ``h + SwiGLU(RMSNorm(h))``; causal grouped-query
attention (each key/value head serves ``num_heads / num_kv_heads`` query
heads); rotary position embedding in the HF "rotate-half" layout (the loader
undoes llama.cpp's interleaved permutation of the q/k rows); final RMSNorm;
output logits from the tied token embedding. Per-layer params are stacked on a
leading axis and the blocks run under :func:`jax.lax.scan`, so tracing and
compile time do not grow with depth.

Positions only enter through RoPE, so attention depends only on relative
positions: ``position_offset`` changes the logits only by float rounding.

References:
  Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", 2023;
  Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
  2021; Shazeer, "GLU Variants Improve Transformer", 2020; Ainslie et al., "GQA:
  Training Generalized Multi-Query Transformer Models from Multi-Head
  Checkpoints", EMNLP 2023; Zhang & Sennrich, "Root Mean Square Layer
  Normalization", NeurIPS 2019; Allal et al., "SmolLM2: When Smol Goes Big", 2025.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_mm.real import bpe
from fedjax_mm.real.gguf_file import GGUFFile
from fedjax_mm.real.gguf_reader import LlamaConfig, load_gguf

_INIT = nn.initializers.normal(stddev=0.02)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """``x / rms(x) * scale``, computed in float32 and cast back to ``x.dtype``."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope_tables(positions: jax.Array, dim: int, base: float) -> tuple[jax.Array, jax.Array]:
  """``cos, sin [..., dim/2]`` of angles ``pos * base^(-2i/dim)`` (float32)."""
  inv_freq = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates ``x [B, T, H, d]`` with rotate-half pairing ``(i, i + d/2)``.

  ``cos, sin`` are ``[B or 1, T, d/2]``; the rotation runs in float32.
  """
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  c, s = cos[:, :, None], sin[:, :, None]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1).astype(x.dtype)


def _block(cfg: LlamaConfig, dtype: Any, h: jax.Array, lp: dict, cos: jax.Array,
           sin: jax.Array) -> jax.Array:
  """One pre-norm decoder block on ``h [B, T, D]`` with layer params ``lp``."""
  b, t, _ = h.shape
  kv, group, d = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
  w = {name: a.astype(dtype) for name, a in lp.items()}
  x = rms_norm(h, lp["attn_norm"], cfg.rms_eps)
  q = apply_rope((x @ w["q"]).reshape(b, t, cfg.num_heads, d), cos, sin)
  k = apply_rope((x @ w["k"]).reshape(b, t, kv, d), cos, sin)
  v = (x @ w["v"]).reshape(b, t, kv, d)
  # Query head n uses kv head n // group (HF repeat_kv order): group the query
  # heads instead of materializing repeated keys/values.
  q = q.reshape(b, t, kv, group, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
  scores = jnp.where(causal, scores / jnp.sqrt(jnp.float32(d)), -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  attn = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, cfg.num_heads * d)
  h = h + attn @ w["o"]
  x = rms_norm(h, lp["mlp_norm"], cfg.rms_eps)
  return h + (jax.nn.silu(x @ w["gate"]) * (x @ w["up"])) @ w["down"]


class Llama(nn.Module):
  """Llama decoder with the :class:`~fedjax_mm.models.language.CausalLM` API.

  Attributes:
    config: sizes, read from the GGUF by :func:`~fedjax_mm.real.gguf_reader.read_config`.
    num_layers: run only the first ``num_layers`` blocks (``None``: all); must
      match the params' leading layer dim.
    dtype: compute dtype (params stay float32 and are cast per use; norms,
      RoPE, softmax and logits run in float32).
  """

  config: LlamaConfig
  num_layers: int | None = None
  dtype: Any = jnp.float32

  def setup(self) -> None:
    cfg = self.config
    if cfg.rope_dim != cfg.head_dim or cfg.num_heads % cfg.num_kv_heads:
      raise NotImplementedError("needs full-head RoPE and num_kv_heads | num_heads")
    n = self.num_layers or cfg.num_layers
    if not 1 <= n <= cfg.num_layers:
      raise ValueError(f"num_layers must be in [1, {cfg.num_layers}], got {self.num_layers}")
    d, f = cfg.width, cfg.mlp_dim
    qd, kvd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"attn_norm": (d,), "q": (d, qd), "k": (d, kvd), "v": (d, kvd), "o": (qd, d),
              "mlp_norm": (d,), "gate": (d, f), "up": (d, f), "down": (f, d)}

    def init_layers(key: jax.Array) -> dict:
      keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
      return {name: (jnp.ones((n, *s)) if len(s) == 1 else _INIT(keys[name], (n, *s)))
              for name, s in shapes.items()}

    self.token_embed = nn.Embed(cfg.vocab_size, d, embedding_init=_INIT)
    self.layers = self.param("layers", init_layers)
    self.final_norm = self.param("final_norm", nn.initializers.ones, (d,))
    if not cfg.tie_embeddings:
      self.lm_head = self.param("lm_head", _INIT, (d, cfg.vocab_size))

  def embed(self, tokens: jax.Array) -> jax.Array:
    """Token ids ``[B, L]`` -> float32 token embeddings ``[B, L, D]``."""
    return self.token_embed(tokens)

  def unembed(self, hidden: jax.Array) -> jax.Array:
    """Final-norm features ``[..., D]`` -> float32 logits ``[..., V]``."""
    table = (self.token_embed.embedding.T if self.config.tie_embeddings else self.lm_head)
    return jnp.matmul(hidden.astype(self.dtype), table.astype(self.dtype),
                      preferred_element_type=jnp.float32)

  def forward_embeddings(self, x: jax.Array, position_offset: jax.Array | int = 0
                         ) -> tuple[jax.Array, jax.Array]:
    """Runs the decoder on an embedding sequence.

    Args:
      x: ``[B, T, D]`` input embeddings (no positions: RoPE adds them).
      position_offset: scalar or ``[B]`` position of ``x[:, 0]``.

    Returns:
      ``(logits [B, T, V] float32, hidden [B, T, D])``; ``hidden`` is the final
      RMSNorm output in the compute dtype.
    """
    cfg = self.config
    t = x.shape[1]
    offset = jnp.asarray(position_offset, jnp.int32).reshape(-1, 1)
    cos, sin = rope_tables(offset + jnp.arange(t, dtype=jnp.int32)[None], cfg.head_dim,
                           cfg.rope_base)
    step = lambda h, lp: (_block(cfg, self.dtype, h, lp, cos, sin), None)
    h, _ = jax.lax.scan(step, x.astype(self.dtype), self.layers)
    hidden = rms_norm(h, self.final_norm, cfg.rms_eps)
    return self.unembed(hidden), hidden

  def __call__(self, tokens: jax.Array, position_offset: jax.Array | int = 0) -> jax.Array:
    """Token ids ``[B, L]`` -> next-token logits ``[B, L, V]`` (float32)."""
    logits, _ = self.forward_embeddings(self.embed(tokens), position_offset)
    return logits


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens"))
def greedy_generate(module: Llama, params: Any, prefix: jax.Array, max_new_tokens: int,
                    stop_ids: tuple[int, ...] = (), pad_id: int | None = None) -> jax.Array:
  """Greedy decoding after a shared-length prefix, without a KV cache.

  Each step re-runs the whole fixed-size buffer ``[B, P + max_new_tokens, D]``:
  causal masking hides the not-yet-written tail, so this is exact and jits to
  one loop body (cost ``max_new_tokens`` full forwards; fine for short answers).

  Args:
    module: the :class:`Llama` (static).
    params: its params (the inner dict, as returned by :func:`load`).
    prefix: token ids ``[B, P]`` (int) or embeddings ``[B, P, D]`` (e.g. a
      visual prefix followed by embedded text).
    max_new_tokens: tokens to generate.
    stop_ids: a row stops after emitting any of these (it is kept in the output).
      Traced, not static: other ids of the same count reuse the compilation.
    pad_id: fills a row after it stopped (default ``stop_ids[0]``, else 0).

  Returns:
    ``[B, max_new_tokens]`` int32 token ids.
  """
  variables = {"params": params}
  if prefix.ndim == 2:
    prefix = module.apply(variables, prefix, method=Llama.embed)
  b, p, d = prefix.shape
  stops = jnp.asarray(stop_ids if len(stop_ids) else (-1,), jnp.int32).reshape(-1)
  fill = jnp.asarray(pad_id if pad_id is not None else (stops[0] if len(stop_ids) else 0),
                     jnp.int32)
  buf = jnp.concatenate([prefix.astype(jnp.float32),
                         jnp.zeros((b, max_new_tokens, d), jnp.float32)], 1)

  def step(i, carry):
    buf, out, done = carry
    _, hidden = module.apply(variables, buf, method=Llama.forward_embeddings)
    last = jax.lax.dynamic_index_in_dim(hidden, p + i - 1, axis=1, keepdims=False)
    token = jnp.argmax(module.apply(variables, last, method=Llama.unembed), -1).astype(jnp.int32)
    token = jnp.where(done, fill, token)
    done = done | jnp.isin(token, stops)
    emb = module.apply(variables, token[:, None], method=Llama.embed)
    buf = jax.lax.dynamic_update_slice_in_dim(buf, emb.astype(buf.dtype), p + i, axis=1)
    return buf, out.at[:, i].set(token), done

  init = (buf, jnp.zeros((b, max_new_tokens), jnp.int32), jnp.zeros((b,), jnp.bool_))
  return jax.lax.fori_loop(0, max_new_tokens, step, init)[1]


def load(path: str | os.PathLike | None = None, num_layers: int | None = None,
         dtype: Any = jnp.float32, cache: bool = True
         ) -> tuple[Llama, dict, Any, bpe.SpecialTokens]:
  """Loads SmolLM2 (or any Llama GGUF) for inference or fine-tuning.

  Args:
    path: the GGUF (default: the pinned SmolLM2-135M-Instruct asset).
    num_layers: keep only the first blocks (truncated model for tests).
    dtype: compute dtype of the module.
    cache: use the float32 ``.npy`` cache of the dequantized weights
      (:mod:`fedjax_mm.real.f32_cache`).

  Returns:
    ``(module, params, tokenizer, special_ids)``: ``params`` is the inner param
    dict on device (apply as ``{"params": params}``), ``tokenizer`` a
    ``tokenizers.Tokenizer`` (adds no BOS; see ``special_ids.add_bos``) that
    encodes all text as text: ``"<|im_end|>"`` in a caption is not the id
    ``special_ids.im_end``.

  Raises:
    fedjax_mm.real.assets.DamagedFileError: the GGUF is damaged or truncated.
  """
  if path is None:
    from fedjax_mm.real import assets  # pylint: disable=g-import-not-at-top
    path = assets.path("smollm2")
  gf = GGUFFile(path)
  config, params = load_gguf(gf, num_layers, cache)
  module = Llama(config, num_layers=num_layers, dtype=dtype)
  return (module, jax.device_put(params), bpe.tokenizer_from_metadata(gf.metadata),
          bpe.special_tokens(gf.metadata))
