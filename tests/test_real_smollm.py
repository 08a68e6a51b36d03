"""Tests of the real SmolLM2-135M tower (fedjax_mm.real: GGUF reader, BPE, Llama).

Needs the GGUF asset (``scripts/fetch_real.sh``); skipped with that reason if it
is missing. The golden logits come from the independent float64 NumPy
reference ``scripts/make_smollm2_golden.py``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm.real import assets, bpe, gguf_reader, smollm

GOLDEN = Path(__file__).parent / "golden" / "smollm2_logits.npz"
PROMPT = "The capital of France is"
GOLDEN_ATOL = 1e-3   # absolute, on logits of magnitude ~20 (measured max ~1.3e-4)
BF16_ATOL = 3.0      # absolute, bf16 vs float32 compute (measured max ~1.5, at position 0)


def _gguf() -> Path:
  try:
    return assets.path("smollm2")
  except FileNotFoundError as e:
    pytest.skip(f"SmolLM2 GGUF not fetched (run scripts/fetch_real.sh): {e}")


@pytest.fixture(scope="module")
def full():
  module, params, tokenizer, special = smollm.load(_gguf())

  @jax.jit
  def apply(p, t):
    # Full float32 matmuls on every backend (GPUs default to TF32), for the 1e-3 check.
    with jax.default_matmul_precision("highest"):
      return module.apply({"params": p}, t)
  return module, params, tokenizer, special, apply


@pytest.fixture(scope="module")
def small():
  """The first 2 layers, dequantized straight from the GGUF (no cache)."""
  config, params = gguf_reader.load_gguf(_gguf(), num_layers=2, cache=False)
  module = smollm.Llama(config, num_layers=2)
  # Offsets always passed as an int32 [B] array, so shifted and unshifted calls
  # share one compilation.
  jitted = jax.jit(lambda p, t, offset: module.apply({"params": p}, t, offset))
  apply = lambda p, t, offset=(0, 0): jitted(p, t, jnp.asarray(offset, jnp.int32))
  return module, jax.device_put(params), apply


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(GOLDEN))


def test_config_read_from_metadata(full):
  cfg = full[0].config
  assert (cfg.num_layers, cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
          cfg.mlp_dim, cfg.vocab_size) == (30, 576, 9, 3, 64, 1536, 49152)
  assert cfg.rope_base == 1e5 and cfg.rms_eps == pytest.approx(1e-5) and cfg.tie_embeddings


def test_logits_match_float64_reference(full, golden):
  module, params, tokenizer, special, apply = full
  ids = bpe.encode(tokenizer, special, PROMPT)
  np.testing.assert_array_equal(ids, golden["prompt_ids"])
  logits = np.asarray(apply(params, jnp.asarray(ids)[None]))[0]
  np.testing.assert_allclose(logits[-1], golden["last_logits"], rtol=0, atol=GOLDEN_ATOL)
  np.testing.assert_allclose(logits[:, golden["subset_ids"]], golden["subset_logits"],
                             rtol=0, atol=GOLDEN_ATOL)


def test_greedy_smoke_paris(full, golden):
  module, params, tokenizer, special, _ = full
  prompt = jnp.asarray([bpe.encode(tokenizer, special, PROMPT)])
  out = np.asarray(smollm.greedy_generate(module, params, prompt, 2, special.stop_ids()))
  np.testing.assert_array_equal(out[0], golden["greedy_ids"][:2])
  assert tokenizer.decode(out[0].tolist()).startswith(" Paris")


def test_bf16_compute_close_to_float32(full, golden):
  module, params, tokenizer, special, apply = full
  bf16 = smollm.Llama(module.config, dtype=jnp.bfloat16)
  tokens = jnp.asarray(golden["prompt_ids"])[None]
  low = np.asarray(jax.jit(lambda p, t: bf16.apply({"params": p}, t))(params, tokens))
  high = np.asarray(apply(params, tokens))
  assert low.dtype == np.float32
  np.testing.assert_allclose(low, high, rtol=0, atol=BF16_ATOL)
  assert low[0, -1].argmax() == high[0, -1].argmax()


@pytest.mark.parametrize("text", [
    "Hello, world!", "  two leading spaces", "numbers 1234 and 3.14", "café naïve — “quotes”",
    "日本語 and emoji 🤗", "tabs\tand\nnewlines\n", "<|im_start|>user\nHi<|im_end|>"])
def test_tokenizer_round_trip(full, text):
  tokenizer = full[2]
  ids = tokenizer.encode(text).ids
  assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_vocab_and_special_ids(full):
  module, params, tokenizer, special, _ = full
  meta = gguf_reader.GGUFFile(_gguf()).metadata
  n_tokens = len(meta["tokenizer.ggml.tokens"])
  assert tokenizer.get_vocab_size() == n_tokens == params["token_embed"]["embedding"].shape[0]
  assert (special.bos, special.eos, special.pad, special.add_bos) == (1, 2, 2, False)
  # Text spelling a control token stays text (a caption cannot inject the stop id);
  # parse_special=True reads chat markers as their ids.
  markers = "<|im_start|><|im_end|><|endoftext|>"
  ids = tokenizer.encode(markers).ids
  assert not set(ids) & {special.im_start, special.im_end, special.endoftext}
  assert tokenizer.decode(ids) == markers
  chat = bpe.tokenizer_from_metadata(meta, parse_special=True)
  assert chat.encode(markers).ids == [special.im_start, special.im_end, special.endoftext]
  # Digits are split one by one (the "smollm" pre-tokenizer), not merged.
  assert len(tokenizer.encode("2024").ids) == 4


def test_truncated_model(small, full):
  module, params, apply = small
  assert all(a.shape[0] == 2 for a in jax.tree.leaves(params["layers"]))
  for name, a in params["layers"].items():  # direct dequantization == cached full model
    np.testing.assert_array_equal(np.asarray(a), np.asarray(full[1]["layers"][name][:2]))
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  assert jax.tree.map(lambda a: a.shape, abstract["params"]) == jax.tree.map(
      lambda a: a.shape, params)
  logits = apply(params, TOKENS)
  assert logits.shape == (2, 6, 49152) and bool(jnp.isfinite(logits).all())
  with pytest.raises(Exception, match="shape"):  # num_layers must match the params
    jax.eval_shape(apply, full[1], TOKENS)


# Two rows: the smoke prompt + " Paris", and text with punctuation and digits.
TOKENS = jnp.asarray([[504, 3575, 282, 4649, 314, 7042], [19556, 28, 905, 17, 33, 34]])


def test_entry_points_causality_and_offsets(small):
  module, params, apply = small
  logits = apply(params, TOKENS)
  def two_steps(p, t):
    emb = module.apply({"params": p}, t, method=smollm.Llama.embed)
    return (emb, *module.apply({"params": p}, emb, jnp.zeros(2, jnp.int32),
                               method=smollm.Llama.forward_embeddings))
  emb, via_emb, hidden = jax.jit(two_steps)(params, TOKENS)
  np.testing.assert_allclose(via_emb, logits, rtol=0, atol=1e-5)
  assert hidden.shape == (2, 6, 576)
  # Causal: a prefix's logits ignore what follows it.
  np.testing.assert_allclose(apply(params, TOKENS[:, :3]), logits[:, :3], rtol=0, atol=1e-4)
  # RoPE is relative: shifting all positions (scalar or per row) keeps the logits.
  np.testing.assert_allclose(apply(params, TOKENS, (7, 300)), logits,
                             rtol=0, atol=1e-3)
  # Greedy from token ids == from their embeddings == teacher-forced argmax.
  out = smollm.greedy_generate(module, params, TOKENS[:, :3], 3, (-5,), -7)
  np.testing.assert_array_equal(
      out, smollm.greedy_generate(module, params, emb[:, :3], 3, (-5,), -7))
  forced = apply(params, jnp.concatenate([TOKENS[:, :3], out], 1))
  np.testing.assert_array_equal(out, forced[:, 2:5].argmax(-1))


def test_greedy_stops_and_pads(small):
  module, params, _ = small
  free = np.asarray(smollm.greedy_generate(module, params, TOKENS[:, :3], 3, (-5,), -7))
  stop = int(free[0, 1])
  first = list(free[0]).index(stop)  # 0 or 1
  out = np.asarray(smollm.greedy_generate(module, params, TOKENS[:, :3], 3, (stop,), -7))
  np.testing.assert_array_equal(out[0], np.concatenate([free[0, :first + 1],
                                                        np.full(2 - first, -7)]))


def _rope_adjacent(x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
  """GPT-J-style RoPE (pairs (2i, 2i+1)) on ``[T, d]``, as llama.cpp applies it."""
  d = x.shape[-1]
  ang = pos[:, None] * base ** (-np.arange(0, d, 2) / d)
  even, odd = x[:, 0::2], x[:, 1::2]
  out = np.empty_like(x)
  out[:, 0::2], out[:, 1::2] = even * np.cos(ang) - odd * np.sin(ang), \
      even * np.sin(ang) + odd * np.cos(ang)
  return out


def test_rope_layout_and_relativity():
  rng = np.random.default_rng(0)
  heads, d, fan_in, base = 3, 8, 5, 1e4
  w_gguf = rng.normal(size=(heads * d, fan_in))
  x = rng.normal(size=(4, fan_in))
  pos = np.arange(4.0) + 2
  # llama.cpp layout + adjacent-pair RoPE == un-permuted layout + rotate-half RoPE,
  # up to the same per-head permutation of dims (so q.k scores agree).
  gg = _rope_adjacent((x @ w_gguf.T).reshape(4 * heads, d), np.repeat(pos, heads), base)
  hf = (x @ gguf_reader.unpermute_rotary_rows(w_gguf, heads).T).reshape(4, heads, d)
  rope = jax.jit(lambda x, p: smollm.apply_rope(x, *smollm.rope_tables(p, d, base)))
  hf = np.asarray(rope(jnp.asarray(hf, jnp.float32)[None], jnp.asarray(pos)[None]))[0]
  np.testing.assert_allclose(hf.reshape(-1, d), gg.reshape(-1, heads, d // 2, 2)
                             .swapaxes(-1, -2).reshape(-1, d), atol=1e-5)
  # Scores depend on the position difference only, and on it.
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, d)), jnp.float32) for _ in range(2))
  score_fn = jax.jit(lambda m, n: jnp.sum(
      smollm.apply_rope(q, *smollm.rope_tables(m.reshape(1, 1), d, base))
      * smollm.apply_rope(k, *smollm.rope_tables(n.reshape(1, 1), d, base))))
  score = lambda m, n: float(score_fn(jnp.int32(m), jnp.int32(n)))
  assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
