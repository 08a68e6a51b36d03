"""Writes tests/golden/smollm2_logits.npz: SmolLM2 logits from a float64 NumPy reference.

An independent reference for ``tests/test_real_smollm.py``: it shares no code
with ``fedjax_mm.real`` (it reads the file with ``gguf.GGUFReader``, not the
project's parser) and is written from the architecture description alone
(Touvron et al. 2023, LLaMA; Su et al. 2021, RoFormer; Shazeer 2020, GLU
variants; Ainslie et al. 2023, GQA; Allal et al. 2025, SmolLM2):

  h = embed[tokens]
  per layer: h += Wo attn(rope(Wq n), rope(Wk n), Wv n),  n = rmsnorm(h) * g1
             h += Wd (silu(Wg n) * (Wu n)),                n = rmsnorm(h) * g2
  logits = (rmsnorm(h) * g) @ embed.T                       (tied embedding)

Unlike the JAX model it keeps llama.cpp's q/k layout and rotates adjacent pairs
``(2i, 2i+1)`` (GPT-J style); the JAX model un-permutes the rows and rotates
``(i, i + d/2)``. Agreement therefore also checks that un-permutation.

The prompt is "The capital of France is", encoded by looking its byte-level
BPE pieces up in the GGUF vocabulary (BOS prepended only if the metadata's
``tokenizer.ggml.add_bos_token`` says so; for SmolLM2 it is False).

Stored (float32 unless noted; < 300 KB):
  prompt_ids [T] int32; last_logits [V] (all logits at the last position);
  subset_ids [64] int32 and subset_logits [T, 64] (logits of a fixed vocab
  subset at every position: the reference's top 32 at the last position plus
  32 seeded random ids); greedy_ids [4] int32 (greedy continuation, each step
  a full float64 forward); gguf_sha256 (str).

Run (once, ~1 min; needs the asset from scripts/fetch_real.sh):
  JAX_PLATFORMS=cpu .venv/bin/python scripts/make_smollm2_golden.py
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import gguf
import numpy as np

PROMPT_PIECES = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]  # "The capital of France is"
NUM_GREEDY = 4
NUM_SUBSET = 64


def default_gguf() -> Path:
  root = os.environ.get("FEDJAX_MM_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "fedjax_mm"))
  return Path(root) / "real" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Reference:
  """Float64 Llama forward pass on weights in GGUF's own layout."""

  def __init__(self, path: Path):
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    self.meta = meta
    self.n_layers = int(meta["llama.block_count"])
    self.n_heads = int(meta["llama.attention.head_count"])
    self.n_kv = int(meta["llama.attention.head_count_kv"])
    self.width = int(meta["llama.embedding_length"])
    self.head_dim = self.width // self.n_heads
    self.eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
    self.base = float(meta["llama.rope.freq_base"])
    # dequantize gives numpy shapes (GGUF dims reversed): matrices are [out, in].
    self.w = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float64)
              for t in reader.tensors}
    assert "output.weight" not in self.w, "expected tied embeddings"

  def rmsnorm(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

  def rope_adjacent(self, x: np.ndarray) -> np.ndarray:
    """x [T, H, d]: rotate pairs (2i, 2i+1) by angle pos * base^(-2i/d)."""
    t, _, d = x.shape
    theta = self.base ** (-np.arange(0, d, 2, dtype=np.float64) / d)   # [d/2]
    ang = np.arange(t, dtype=np.float64)[:, None] * theta[None]         # [T, d/2]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out

  def logits(self, ids: list[int]) -> np.ndarray:
    """[T, V] next-token logits of one sequence."""
    w, t, d = self.w, len(ids), self.head_dim
    h = w["token_embd.weight"][ids]                                     # [T, D]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(self.n_layers):
      p = lambda role: w[f"blk.{i}.{role}.weight"]
      n = self.rmsnorm(h, p("attn_norm"))
      q = self.rope_adjacent((n @ p("attn_q").T).reshape(t, self.n_heads, d))
      k = self.rope_adjacent((n @ p("attn_k").T).reshape(t, self.n_kv, d))
      v = (n @ p("attn_v").T).reshape(t, self.n_kv, d)
      heads = []
      for head in range(self.n_heads):
        kv = head // (self.n_heads // self.n_kv)  # consecutive q heads share a kv head
        s = q[:, head] @ k[:, kv].T / np.sqrt(d)
        s = np.where(causal, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        heads.append((s / s.sum(-1, keepdims=True)) @ v[:, kv])
      h = h + np.concatenate(heads, -1) @ p("attn_output").T
      n = self.rmsnorm(h, p("ffn_norm"))
      gate = n @ p("ffn_gate").T
      h = h + ((gate / (1 + np.exp(-gate))) * (n @ p("ffn_up").T)) @ p("ffn_down").T
    return self.rmsnorm(h, w["output_norm.weight"]) @ w["token_embd.weight"].T


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gguf", type=Path, default=default_gguf())
  parser.add_argument("--out", type=Path,
                      default=Path(__file__).resolve().parent.parent / "tests" / "golden"
                      / "smollm2_logits.npz")
  args = parser.parse_args(argv)
  ref = Reference(args.gguf)
  vocab = {tok: i for i, tok in enumerate(ref.meta["tokenizer.ggml.tokens"])}
  ids = [vocab[piece] for piece in PROMPT_PIECES]
  if ref.meta.get("tokenizer.ggml.add_bos_token", False):
    ids = [int(ref.meta["tokenizer.ggml.bos_token_id"])] + ids
  logits = ref.logits(ids)
  greedy, seq = [], list(ids)
  for step in range(NUM_GREEDY):
    nxt = int(np.argmax(logits[-1] if step == 0 else ref.logits(seq)[-1]))
    greedy.append(nxt)
    seq.append(nxt)
  top = np.argsort(-logits[-1])[:NUM_SUBSET // 2]
  rest = np.setdiff1d(np.random.default_rng(0).permutation(logits.shape[1]), top,
                      assume_unique=True)
  subset = np.sort(np.concatenate([top, rest[:NUM_SUBSET - len(top)]]))
  sha = hashlib.sha256(args.gguf.read_bytes()).hexdigest()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, prompt_ids=np.asarray(ids, np.int32),
                      last_logits=logits[-1].astype(np.float32),
                      subset_ids=subset.astype(np.int32),
                      subset_logits=logits[:, subset].astype(np.float32),
                      greedy_ids=np.asarray(greedy, np.int32), gguf_sha256=np.asarray(sha))
  pieces = [ref.meta["tokenizer.ggml.tokens"][i] for i in greedy]
  print(f"wrote {args.out} ({args.out.stat().st_size} bytes): prompt {ids}, greedy {greedy} "
        f"{pieces}", file=sys.stderr)


if __name__ == "__main__":
  main()
