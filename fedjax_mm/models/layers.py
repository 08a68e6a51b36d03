"""Transformer layers shared by the vision tower and the language model.

:class:`TransformerBlock` (pre-LN) is the block of both the ViT
(:mod:`fedjax_mm.models.vision`, bidirectional) and the causal LM
(:mod:`fedjax_mm.models.language`, ``causal=True``); :data:`EMBED_INIT` is the
initializer of both towers' position and token embeddings. Submodule names
are part of the parameter tree that cached pretrained towers are stored
under: keep them.

References:
  Vaswani et al., "Attention Is All You Need", NeurIPS 2017. Xiong et al.,
  "On Layer Normalization in the Transformer Architecture", ICML 2020 (pre-LN).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# GPT-2 / ViT style small-normal init for embeddings; keeps the residual
# stream's initial scale independent of width.
EMBED_INIT = nn.initializers.normal(stddev=0.02)


class TransformerBlock(nn.Module):
  """Pre-LN transformer block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``.

  Attributes:
    num_heads: attention heads (must divide the width).
    mlp_dim: hidden width of the GELU MLP.
    causal: whether position ``t`` may only attend to positions ``<= t``.
  """

  num_heads: int
  mlp_dim: int
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.bool_)) if self.causal else None
    h = nn.LayerNorm(name="ln_attn")(x)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=width, out_features=width,
        name="attn")(h, h, mask=mask)
    x = x + h
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.Dense(self.mlp_dim, name="mlp_in")(h)
    h = nn.gelu(h)
    h = nn.Dense(width, name="mlp_out")(h)
    return x + h
