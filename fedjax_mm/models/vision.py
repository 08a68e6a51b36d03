"""A small Vision Transformer and its attribute-classification pretraining head.

The encoder maps ``[B, 32, 32, 3]`` images with values in ``[0, 1]`` to patch
tokens ``[B, N, width]`` with ``N = (32 / patch_size) ** 2`` (row-major patch
order, so ``N`` tokens form a ``sqrt(N) x sqrt(N)`` grid). There is no CLS
token: the multimodal model consumes all patch tokens (as LLaVA does with the
CLIP grid features), and the pretraining heads mean-pool them.

The transformer block (:class:`TransformerBlock`, pre-LN) is shared with the
causal language model in :mod:`fedjax_mm.models.language`.

References:
  Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
  Recognition at Scale", ICLR 2021; arXiv:2010.11929.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGE_SIZE = 32
# GPT-2 / ViT style small-normal init for embeddings; keeps the residual
# stream's initial scale independent of width.
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


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


class ViT(nn.Module):
  """Patch embedding + learned positions + pre-LN encoder + final LayerNorm.

  Attributes:
    patch_size: side of a square patch; 4 gives 64 tokens, 8 gives 16.
    width: token width ``Dv``.
    depth: number of transformer blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
  """

  patch_size: int = 8
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256

  @property
  def num_tokens(self) -> int:
    return (IMAGE_SIZE // self.patch_size) ** 2

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """``[B, 32, 32, 3]`` float in ``[0, 1]`` -> tokens ``[B, N, width]``."""
    if images.shape[1] % self.patch_size or images.shape[2] % self.patch_size:
      raise ValueError(f"image size {images.shape[1:3]} not divisible by patch {self.patch_size}")
    # Centre the pixel values so the patch projection starts unbiased.
    x = images.astype(jnp.float32) - 0.5
    x = nn.Conv(self.width, (self.patch_size, self.patch_size),
                strides=(self.patch_size, self.patch_size), padding="VALID",
                name="patch_embed")(x)
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    pos = self.param("pos_embed", _EMBED_INIT, (1, gh * gw, d))
    x = x + pos
    for i in range(self.depth):
      x = TransformerBlock(self.num_heads, self.mlp_dim, name=f"block_{i}")(x)
    # Final LN: downstream projectors then see unit-scale features per token.
    return nn.LayerNorm(name="ln_final")(x)


class AttributeHeads(nn.Module):
  """One linear classifier per attribute on mean-pooled tokens.

  Attributes:
    num_classes: ``(attribute name, number of classes)`` pairs.
  """

  num_classes: Sequence[tuple[str, int]]

  @nn.compact
  def __call__(self, tokens: jax.Array) -> dict[str, jax.Array]:
    pooled = tokens.mean(axis=1)
    return {name: nn.Dense(n, name=f"head_{name}")(pooled) for name, n in self.num_classes}


class ViTClassifier(nn.Module):
  """ViT encoder + :class:`AttributeHeads`, for central pretraining.

  Its params are ``{'encoder': vit_params, 'heads': ...}``; after pretraining
  ``params['encoder']`` is the frozen vision tower (apply it with :class:`ViT`).
  """

  vit: ViT
  num_classes: Sequence[tuple[str, int]]

  def setup(self) -> None:
    self.encoder = self.vit.clone(name=None)
    self.heads = AttributeHeads(self.num_classes)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    return self.heads(self.encoder(images))
