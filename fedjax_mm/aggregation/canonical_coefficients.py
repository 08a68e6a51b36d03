"""CRA's fusion in the canonical space: TIES-style trimming, sign election, per-direction mix.

The coefficient half of Fed-CMP's canonical reliability-aware aggregation (a
reconstruction; ``canonical.py`` step 5). TIES-Merging's three steps (trim,
elect sign, disjoint mean; Yadav et al., NeurIPS 2023) are applied to the
clients' coefficients ``D_k = Uᵀ ΔW_k`` (``r x n``) in the shared basis rather
than to raw parameters, with the reliability weights ``α`` in place of
TIES's uniform mean:

* trim (``trim = t``): per client and matrix keep the ``ceil((1 - t) r n)``
  largest ``|D_k|`` entries (ties at the threshold kept), zero the rest;
* fuse: ``C*_{j,i} = Σ_k α_{k,j} D_{k,j,i}`` (``α_{k,j} = α_k`` under
  ``weighting="client"``);
* sign election (``sign_election=True``): ``s_{j,i} = sign(Σ_k α_{k,j}
  D_{k,j,i})``, and the disjoint weighted mean over the agreeing nonzero
  entries ``C*_{j,i} = Σ_{k∈A} α_{k,j} D_{k,j,i} / Σ_{k∈A} α_{k,j}``,
  ``A = {k : sign(D_{k,j,i}) = s_{j,i}}`` (0 where nobody agrees).

References:
  Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
  NeurIPS 2023.
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def trimmed(c: jax.Array, trim: float) -> jax.Array:
  """``c [C, r, n]`` keeping each client's top ``ceil((1 - trim) r n)`` ``|entries|`` only."""
  if trim == 0:
    return c
  flat = c.reshape(c.shape[0], -1)
  size = flat.shape[1]
  keep = max(1, math.ceil((1.0 - trim) * size - 1e-6))   # 1e-6: (1 - t) r n exact in reals
  mag = jnp.abs(flat)
  threshold = jnp.sort(mag, axis=1)[:, size - keep]       # the keep-th largest per client
  return jnp.where((mag >= threshold[:, None]) & (flat != 0), flat, 0.0).reshape(c.shape)


def fused_coefficients(c: jax.Array, alpha: jax.Array, sign_election: bool) -> jax.Array:
  """``C*`` (``r x n``) from ``c [C, r, n]`` and weights ``alpha [C]`` or ``[C, r]``."""
  a = alpha[:, None, None] if alpha.ndim == 1 else alpha[:, :, None]
  total = jnp.sum(a * c, axis=0)
  if not sign_election:
    return total
  agree = (jnp.sign(c) == jnp.sign(total)[None]) & (c != 0)
  num = jnp.sum(jnp.where(agree, a * c, 0.0), axis=0)
  den = jnp.sum(jnp.where(agree, a, 0.0) * jnp.ones_like(c), axis=0)
  return jnp.where(den > 0, num / jnp.maximum(den, 1e-30), 0.0)


def direction_slices(bases) -> list[slice]:
  """Each matrix's columns in the pooled ``[C, Σ r]`` per-direction scores."""
  ends = [0]
  for u in bases:
    ends.append(ends[-1] + u.shape[1])
  return [slice(a, b) for a, b in zip(ends[:-1], ends[1:])]


def fuse_matrix(u: jax.Array, d: jax.Array, alpha: jax.Array, *, trim: float,
                sign_election: bool) -> jax.Array:
  """``U C*`` of one matrix's updates ``d [C, m, n]`` (see the module doc)."""
  c = trimmed(jnp.einsum("mr,cmn->crn", u, d), trim)
  return u @ fused_coefficients(c, alpha, sign_election)
