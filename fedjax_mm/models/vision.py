"""A small Vision Transformer and its attribute-classification pretraining head.

The encoder maps ``[B, 32, 32, 3]`` images with values in ``[0, 1]`` to patch
tokens ``[B, N, width]`` with ``N = (32 / patch_size) ** 2`` (row-major patch
order, so ``N`` tokens form a ``sqrt(N) x sqrt(N)`` grid). There is no CLS
token: the multimodal model consumes all patch tokens (as LLaVA does with the
CLIP grid features), and the pretraining heads mean-pool them.

Tokens come from one of three stems with the same ``sqrt(N) x sqrt(N)`` grid
(``ViT.stem``): ViT's linear patch embedding, overlapping windows, or a small
convolutional stem (the hybrid ViT). On the shapes world the conv stem learns
most attributes markedly faster per step (the towers' default); all stems are
written as matmuls because XLA:CPU differentiates convolutions slowly.

The transformer block (:class:`~fedjax_mm.models.layers.TransformerBlock`,
pre-LN) is shared with the causal language model
(:mod:`fedjax_mm.models.language`) through :mod:`fedjax_mm.models.layers`.

References:
  Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
  Recognition at Scale", ICLR 2021; arXiv:2010.11929. Xiao et al., "Early
  Convolutions Help Transformers See Better", NeurIPS 2021; arXiv:2106.14881.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_mm.models.layers import EMBED_INIT
from fedjax_mm.models.layers import TransformerBlock

IMAGE_SIZE = 32
STEMS = ("patch", "overlap", "conv")


def extract_patches(images: jax.Array, window: int, stride: int) -> jax.Array:
  """``[B, H, W, C]`` -> ``[B, H / stride, W / stride, window * window * C]``.

  Windows are centred on the ``stride`` grid (zero padding at the border).
  The embedding is then a ``Dense`` layer: the same function as a strided
  convolution, but XLA:CPU differentiates a matmul far faster than a conv.
  """
  b, h, w, c = images.shape
  if h % stride or w % stride:
    raise ValueError(f"image size {(h, w)} not divisible by patch {stride}")
  if window == stride:
    x = images.reshape(b, h // stride, stride, w // stride, stride, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // stride, w // stride, -1)
  lo = (window - stride) // 2
  # Pixels are data, never differentiated: the patch gather has no backward.
  return jax.lax.conv_general_dilated_patches(
      jax.lax.stop_gradient(images), (window, window), (stride, stride),
      [(lo, window - stride - lo)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _im2col_3x3_stride2(x: jax.Array) -> jax.Array:
  """``[B, H, W, C]`` -> ``[B, H / 2, W / 2, 9 C]``: 3x3 windows at stride 2.

  Nine strided slices instead of a convolution: their backward pass is a
  cheap pad, whereas XLA:CPU's convolution gradients are slow.
  """
  h, w = x.shape[1], x.shape[2]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([xp[:, dy:dy + h:2, dx:dx + w:2] for dy in range(3) for dx in range(3)],
                         axis=-1)


class ViT(nn.Module):
  """Patch embedding + learned positions + pre-LN encoder + final LayerNorm.

  Attributes:
    patch_size: side of a square patch; 4 gives 64 tokens, 8 gives 16.
    width: token width ``Dv``.
    depth: number of transformer blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    stem: ``'patch'``: ViT's linear embedding of non-overlapping patches;
      ``'overlap'``: linear embedding of ``2 * patch_size`` windows at stride
      ``patch_size`` (same token grid), so an object lying across a patch
      border is still seen whole by some token; ``'conv'``: ``log2(patch_size)``
      stride-2 3x3 convolutions + GELU (channels doubling up to ``width``)
      then a linear token embedding: the hybrid ViT of Dosovitskiy et al.
      (Sec. 3.1) / the convolutional stem of Xiao et al. 2021, translation
      equivariant, so small objects' shapes are learned from fewer steps.
  """

  patch_size: int = 8
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  stem: str = "patch"

  def _stem_channels(self) -> list[int]:
    """Channels of the conv stem's stride-2 layers: doubling up to ``width``."""
    num = max(self.patch_size.bit_length() - 1, 1)
    return [max(self.width // 2 ** (num - 1 - i), 16) for i in range(num)]

  @property
  def num_tokens(self) -> int:
    return (IMAGE_SIZE // self.patch_size) ** 2

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """``[B, 32, 32, 3]`` float in ``[0, 1]`` -> tokens ``[B, N, width]``."""
    # Centre the pixel values so the patch projection starts unbiased.
    x = images.astype(jnp.float32) - 0.5
    if self.stem not in STEMS:
      raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
    if self.stem == "conv":
      size = x.shape[1]
      for i, channels in enumerate(self._stem_channels()):
        x = nn.gelu(nn.Dense(channels, name=f"stem_{i}")(_im2col_3x3_stride2(x)))
      if x.shape[1] * self.patch_size != size:
        raise ValueError(f"conv stem needs a power-of-two patch size, got {self.patch_size}")
      x = nn.Dense(self.width, name="patch_embed")(x)
    else:
      window = self.patch_size * (2 if self.stem == "overlap" else 1)
      x = nn.Dense(self.width, name="patch_embed")(extract_patches(x, window, self.patch_size))
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    pos = self.param("pos_embed", EMBED_INIT, (1, gh * gw, d))
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
