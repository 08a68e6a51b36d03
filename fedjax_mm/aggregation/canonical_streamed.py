"""Fed-CMP's CRA streamed chunk by chunk: the second-moment path (a reconstruction).

The stacked path (``canonical.py``) holds the cohort's updates ``[C, ...]``
at once. When that does not fit (thousands of clients x a large projector),
the same aggregate is computed in one pass with memory O(chunk x model +
Σ m²), from sums only:

* per matrix, the Gram sum ``G = Σ_k X_k X_kᵀ`` (``m x m``) of the
  decomposed matrices (the updates ``ΔW_k``, or the local models
  ``W - ΔW_k``: option ``decompose``), whose top eigenvectors are this
  round's basis ``U``;
* the reliability-weighted sum ``S = Σ_k e_k Δ_k`` and ``Z = Σ_k e_k`` with
  ``e_k = w_k exp(ρ_k / τ)``, kept as an online softmax (a running maximum
  of the logits, rescaling the sums when it grows, so no ``exp`` overflows);
* the aggregate is ``U Uᵀ S / Z`` per matrix (``= U Σ α_k C_k``) and
  ``S / Z`` for vectors.

A client's reliability must be known when its chunk streams past, before
this round's basis exists, so this path scores against *last round's* basis
(``score_with="previous"``; round 0 scores uniformly); ``"agreement"`` needs
this round's consensus and is stacked-only, as is ``"inverse_variance"``,
and so are the variants in ``STACKED_ONLY`` (``weighting="direction"``,
``trim``, ``sign_election``, ``residual``, ``standardize``, ``side``).
With those options the streamed
aggregate equals the stacked one (tested).

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
  Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_mm import checks
from fedjax_mm.aggregation import canonical
from fedjax_mm.aggregation.base import StreamingAggregator
from fedjax_mm.types import PyTree

STREAMABLE_RELIABILITIES = ("explained", "uniform")
# The variants this path does not compute, at the defaults it assumes: a
# per-direction or trimmed or sign-elected fusion needs every client's
# coefficients at once, a z-score every client's score, the residual and the
# moving Gram extra state, the output side transposed sums (not written).
STACKED_ONLY = {"weighting": "client", "trim": 0.0, "sign_election": False,
                "residual": "drop", "standardize": False, "side": "input"}


def unstreamable_option(**variants) -> str | None:
  """The first variant option (``STACKED_ONLY``) off its streamable default, else None."""
  for name, default in STACKED_ONLY.items():
    if name in variants and variants[name] != default:
      return name
  return None


def streamable(reliability: str, score_with: str, **variants) -> bool:
  """Whether CRA with these options has a streamed path (see the module doc)."""
  return (score_with == "previous" and reliability in STREAMABLE_RELIABILITIES
          and unstreamable_option(**variants) is None)


class CanonicalAccumulator(NamedTuple):
  grams: tuple[jax.Array, ...]     # Σ ΔW ΔWᵀ per matrix leaf
  weighted_sum: PyTree             # Σ e_k Δ_k, scaled by exp(-max_logit)
  normalizer: jax.Array            # Σ e_k, same scale
  max_logit: jax.Array             # running maximum of log w_k + ρ_k / τ
  mean_sum: PyTree                 # Σ w_k Δ_k (fusion="mean")
  weight_sum: jax.Array
  score_bases: tuple[jax.Array, ...]
  globals_: tuple[jax.Array, ...]   # the round's global matrices (decompose="weights")


def canonical_streaming(*, rank: int | float | None = None, reliability: str = "explained",
                        temperature: float = 0.1, fusion: str = "coefficients",
                        decompose: str = "updates") -> StreamingAggregator:
  """CRA as a :class:`StreamingAggregator` (see the module doc); scores with last round's basis.

  Raises:
    ValueError: on a bad option, or ``reliability="agreement"`` (stacked only).
  """
  canonical.check_options(rank, reliability, temperature, fusion, decompose=decompose)
  checks.one_of("reliability (streamed)", reliability, STREAMABLE_RELIABILITIES)

  def start(state: canonical.CanonicalState, template: PyTree, key) -> CanonicalAccumulator:
    del key
    zeros = optax.tree.zeros_like(template)
    grams = tuple(jnp.zeros((u.shape[0],) * 2, jnp.float32) for u in state.bases)
    score = tuple(jnp.where(state.has_basis, u, 0.0) for u in state.bases)
    return CanonicalAccumulator(grams, zeros, jnp.zeros(()), jnp.full((), -jnp.inf), zeros,
                                jnp.zeros(()), score,
                                tuple(canonical.global_matrices(decompose, template)))

  def accumulate(acc: CanonicalAccumulator, deltas: PyTree, weights: jax.Array):
    mask = weights > 0          # excluded and padding clients arrive with weight 0
    w = jnp.where(mask, weights.astype(jnp.float32), 0.0)
    leaves = jax.tree.leaves(deltas)
    mats = [jnp.where(mask[:, None, None], canonical.as_matrix(x, 1), 0.0).astype(jnp.float32)
            for x in leaves if canonical.is_matrix(x, 1)]
    mats = canonical.decomposed(decompose, mats, acc.globals_, mask)
    rho = canonical.reliability_scores(reliability, mats, acc.score_bases, w)
    logits = jnp.where(mask, jnp.log(jnp.maximum(w, 1e-30)) + rho / temperature, -jnp.inf)
    new_max = jnp.maximum(acc.max_logit, jnp.max(logits))
    finite = jnp.isfinite(new_max)   # False while no client has counted yet
    rescale = jnp.where(finite, jnp.exp(acc.max_logit - new_max), 1.0)
    e = jnp.where(mask & finite, jnp.exp(logits - jnp.where(finite, new_max, 0.0)), 0.0)
    mix = lambda coef: jax.tree.map(lambda d: jnp.tensordot(coef.astype(d.dtype), d, axes=1),
                                    deltas)
    return CanonicalAccumulator(
        grams=tuple(g + canonical.client_gram(x) for g, x in zip(acc.grams, mats)),
        weighted_sum=jax.tree.map(lambda s, c: s * rescale + c, acc.weighted_sum, mix(e)),
        normalizer=acc.normalizer * rescale + jnp.sum(e),
        max_logit=new_max,
        mean_sum=optax.tree.add(acc.mean_sum, mix(w)),
        weight_sum=acc.weight_sum + jnp.sum(w),
        score_bases=acc.score_bases, globals_=acc.globals_)

  def finalize(state: canonical.CanonicalState, acc: CanonicalAccumulator, key):
    del key
    bases = tuple(canonical.top_eigenvectors(g, u.shape[1])
                  for g, u in zip(acc.grams, state.bases))
    total, sums = ((acc.weight_sum, acc.mean_sum) if fusion == "mean"
                   else (acc.normalizer, acc.weighted_sum))
    scale = jnp.where(total > 0, 1.0 / jnp.maximum(total, 1e-30), 0.0)
    leaves, treedef = jax.tree.flatten(sums)
    out, it = [], iter(bases)
    for s in leaves:
      fused = s * scale
      if canonical.is_matrix(s, 0):
        u = next(it)
        if fusion == "coefficients":
          fused = (u @ (u.T @ canonical.as_matrix(fused, 0))).reshape(s.shape)
      out.append(fused.astype(s.dtype))
    metrics = {"explained": canonical.explained_energy(bases, acc.grams),
               **canonical.basis_drift(bases, state.bases)}
    new_state = canonical.CanonicalState(bases=bases, has_basis=jnp.ones((), bool))
    return jax.tree.unflatten(treedef, out), new_state, metrics

  return StreamingAggregator(name="canonical", init=lambda t: canonical.init_state(t, rank),
                             start=start, accumulate=accumulate, finalize=finalize)
