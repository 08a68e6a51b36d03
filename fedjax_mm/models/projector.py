"""Cross-modal projectors: frozen vision tokens -> frozen LM embedding space.

Two LLaVA projector types map ``[B, N, Dv] -> [B, N', D_lm]``:

* ``'linear'``: one affine map (LLaVA-1.0);
* ``'mlp2x_gelu'``: Linear -> GELU -> Linear (LLaVA-1.5).

Optionally the ``N`` visual tokens are first average-pooled to ``N' =
pool_to`` tokens: spatially (``sqrt(N) x sqrt(N)`` grid to ``sqrt(N') x
sqrt(N')``) when both are squares and the sides divide, otherwise in runs of
``N / N'`` consecutive tokens. Fewer prefix tokens make the LM sequence
shorter (cheaper rounds) at the cost of spatial detail.

Initialisation: the vision features are LayerNorm outputs (unit scale per
coordinate), and LeCun-normal layers roughly preserve that scale, whereas the
LM's token embeddings are much smaller (e.g. 0.02-0.3 per coordinate). A
prefix that starts tens of times louder than any word would dominate the
LM's pre-LN residual stream, so the last layer's kernel is multiplied by
``output_scale``; :func:`fedjax_mm.models.mllm.fedma_task` sets it to the RMS
of the LM's embedding table, so projected tokens start at the scale of words.

References:
  Liu et al., "Visual Instruction Tuning" (LLaVA), NeurIPS 2023;
  arXiv:2304.08485. Liu et al., "Improved Baselines with Visual Instruction
  Tuning" (LLaVA-1.5, mlp2x_gelu), CVPR 2024; arXiv:2310.03744.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

PROJECTOR_KINDS = ("linear", "mlp2x_gelu")


def pool_tokens(tokens: jax.Array, pool_to: int | None) -> jax.Array:
  """Average-pools ``[B, N, D]`` tokens to ``[B, pool_to, D]``.

  Spatial pooling on the square patch grid when possible, else consecutive
  groups; ``None`` or ``N`` returns the input unchanged.

  Raises:
    ValueError: if ``N`` is not a multiple of ``pool_to``.
  """
  b, n, d = tokens.shape
  if pool_to is None or pool_to == n:
    return tokens
  if pool_to <= 0 or n % pool_to:
    raise ValueError(f"cannot pool {n} tokens to {pool_to}")
  side, new_side = math.isqrt(n), math.isqrt(pool_to)
  if side * side == n and new_side * new_side == pool_to and side % new_side == 0:
    k = side // new_side
    grid = tokens.reshape(b, new_side, k, new_side, k, d)
    return grid.mean(axis=(2, 4)).reshape(b, pool_to, d)
  return tokens.reshape(b, pool_to, n // pool_to, d).mean(axis=2)


def layer_inputs(kind: str, pool_to: int | None, params, vis: jax.Array) -> dict[str, jax.Array]:
  """Each Dense layer's input rows under ``params``: ``{"fc1"|"out": [B, N', in]}``.

  What :class:`Projector` feeds its layers (the pooled float32 tokens, then
  for ``mlp2x_gelu`` the GELU of ``fc1``), for merging methods that need the
  layers' input Gram matrices (RegMean). Kept beside ``__call__``, which it
  mirrors; a test checks ``out``'s rows reproduce the module's output.
  """
  x = pool_tokens(vis.astype(jnp.float32), pool_to)
  if kind == "linear":
    return {"out": x}
  hidden = nn.gelu(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  return {"fc1": x, "out": hidden}


class Projector(nn.Module):
  """Vision tokens ``[B, N, Dv]`` -> LM-space prefix ``[B, N', D_lm]``.

  Attributes:
    kind: ``'linear'`` or ``'mlp2x_gelu'``.
    out_dim: LM width ``D_lm``.
    hidden_dim: hidden width of ``mlp2x_gelu`` (``None``: ``out_dim``, as in
      LLaVA-1.5).
    pool_to: number of output tokens ``N'`` (``None``: keep ``N``).
    output_scale: multiplies the last layer's kernel init (see module doc).
  """

  kind: str = "mlp2x_gelu"
  out_dim: int = 128
  hidden_dim: int | None = None
  pool_to: int | None = None
  output_scale: float = 1.0

  @nn.compact
  def __call__(self, vis: jax.Array) -> jax.Array:
    if self.kind not in PROJECTOR_KINDS:
      raise ValueError(f"projector kind must be one of {PROJECTOR_KINDS}, got {self.kind!r}")
    # Cached features may be bfloat16; the projector always computes in f32.
    x = pool_tokens(vis.astype(jnp.float32), self.pool_to)
    out_init = nn.initializers.variance_scaling(self.output_scale ** 2, "fan_in", "normal")
    if self.kind == "mlp2x_gelu":
      x = nn.Dense(self.hidden_dim or self.out_dim, name="fc1")(x)
      x = nn.gelu(x)
      # GELU roughly halves the RMS of a unit Gaussian; undo it so the output
      # scale is `output_scale` for either kind.
      out_init = nn.initializers.variance_scaling(2.0 * self.output_scale ** 2,
                                                  "fan_in", "normal")
    return nn.Dense(self.out_dim, kernel_init=out_init, name="out")(x)
