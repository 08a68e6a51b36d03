"""A small causal transformer language model that accepts embedding prefixes.

Pre-LN GPT-style decoder with learned absolute positions and (by default)
tied input/output embeddings. Three entry points (linen ``method=``):

* :meth:`CausalLM.embed`: token ids ``[B, L]`` -> embeddings ``[B, L, D]``
  (no positions: positions depend on where the tokens end up in the
  sequence, e.g. after a visual prefix);
* :meth:`CausalLM.forward_embeddings`: an embedding sequence ``[B, T, D]`` ->
  ``(logits [B, T, V], hidden [B, T, D])``, so projected visual tokens can be
  prepended to embedded text;
* :meth:`CausalLM.__call__`: token ids -> logits.

Attention is causal; PAD tokens are not masked from attention (they only ever
follow the real tokens, so causality already hides them from every real
position) and are excluded by the loss masks instead.

Token conventions (fixed project-wide): PAD=0, BOS=1, EOS=2, SEP=3, UNK=4.

References:
  Radford et al., "Language Models are Unsupervised Multitask Learners"
  (GPT-2), 2019; Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_mm.models.layers import EMBED_INIT
from fedjax_mm.models.layers import TransformerBlock

PAD, BOS, EOS, SEP, UNK = 0, 1, 2, 3, 4


class CausalLM(nn.Module):
  """Decoder-only LM.

  Attributes:
    vocab_size: ``V``.
    width: model width ``D``.
    depth: number of transformer blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    max_len: number of learned positions; must cover the longest sequence fed
      to :meth:`forward_embeddings` (visual prefix + text included).
    tie_embeddings: output logits use the transposed token embedding.
  """

  vocab_size: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  max_len: int = 64
  tie_embeddings: bool = True

  def setup(self) -> None:
    self.token_embed = nn.Embed(self.vocab_size, self.width, embedding_init=EMBED_INIT)
    self.pos_embed = self.param("pos_embed", EMBED_INIT, (self.max_len, self.width))
    self.blocks = [TransformerBlock(self.num_heads, self.mlp_dim, causal=True)
                   for _ in range(self.depth)]
    self.ln_final = nn.LayerNorm()
    if not self.tie_embeddings:
      self.lm_head = nn.Dense(self.vocab_size, use_bias=False)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """Token ids ``[B, L]`` -> token embeddings ``[B, L, D]`` (no positions)."""
    return self.token_embed(tokens)

  def forward_embeddings(self, x: jax.Array, position_offset: jax.Array | int = 0
                         ) -> tuple[jax.Array, jax.Array]:
    """Runs the decoder on an embedding sequence.

    Args:
      x: ``[B, T, D]`` input embeddings (positions are added here).
      position_offset: scalar or ``[B]`` first position index; pretraining
        draws it at random so that every learned position is trained (see
        :func:`fedjax_mm.models.towers.pretrain_lm`). ``T + offset`` must not
        exceed ``max_len``.

    Returns:
      ``(logits [B, T, V], hidden [B, T, D])`` where ``hidden`` is the final
      LayerNorm output (the features the logits are read from).
    """
    t = x.shape[1]
    if t > self.max_len:
      raise ValueError(f"sequence length {t} exceeds max_len {self.max_len}")
    offset = jnp.asarray(position_offset, jnp.int32).reshape(-1, 1)
    positions = jnp.minimum(offset + jnp.arange(t, dtype=jnp.int32)[None], self.max_len - 1)
    h = x + self.pos_embed[positions].astype(x.dtype)
    for block in self.blocks:
      h = block(h)
    hidden = self.ln_final(h)
    if self.tie_embeddings:
      logits = self.token_embed.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    return logits, hidden

  def __call__(self, tokens: jax.Array, position_offset: jax.Array | int = 0) -> jax.Array:
    """Token ids ``[B, L]`` -> next-token logits ``[B, L, V]``."""
    logits, _ = self.forward_embeddings(self.embed(tokens), position_offset)
    return logits


def embedding_rms(lm_params: dict) -> jax.Array:
  """Root-mean-square entry of the LM's token-embedding table (a scalar).

  Used to initialise projectors so that projected visual tokens start at the
  scale of the LM's own token embeddings.
  """
  table = lm_params["token_embed"]["embedding"]
  return jnp.sqrt(jnp.mean(jnp.square(table.astype(jnp.float32))))
