"""Canonical reliability-aware aggregation (Fed-CMP's CRA), a documented reconstruction.

Fed-CMP (Xiong et al., arXiv:2603.26786, 2026) is known to us only from its
abstract: the server builds a *canonical space* in which each client's
projector decomposes into a *shared alignment basis* and *client-specific
coefficients*, and fuses the coefficients with *reliability weights* to
suppress parameter interference. Everything below that sentence is our
reconstruction (after KnOTS, Stoica et al., ICLR 2025), each choice a named
option. Per weight matrix (every leaf with two or more dimensions, flattened
to ``m x n`` over its last axis; option ``side``: ``"input"`` decomposes
that, the input side of a Flax ``[in, out]`` kernel; ``"output"`` its
transpose ``n x m``, so the basis spans the output dimension, and
``CanonicalState.bases`` are then ``n x r``: OPM must run on the same side),
over the valid clients k with updates ΔW_k and weights ``p_k = w_k / Σ w``:

0. what is decomposed (option ``decompose``): the updates, ``X_k = ΔW_k``
   (default), or the clients' local projectors, ``X_k = W - ΔW_k`` (the
   abstract speaks of decomposing "client projectors"; ``W`` is the round's
   global model). With ``residual="feedback"`` every valid update first
   takes the carried residual, ``ΔW_k ← ΔW_k + e`` (see step 6);
1. basis: ``U`` = the top-``r`` left singular vectors of
   ``M = [X_1 | ... | X_K]`` (``m x nK``), computed as the eigenvectors of
   ``G = Σ_k X_k X_kᵀ`` (``m x m``: the same space, and a sum that streams
   chunk by chunk, see ``canonical_streamed.py``);
2. coefficients ``C_k = Uᵀ X_k`` (``r x n``), of the updates ``D_k = Uᵀ ΔW_k``;
3. reliability (option ``weighting``). ``"client"``: one ``ρ_k`` per
   client (option ``reliability``): ``"explained"``: ``‖U C_k‖² / ‖X_k‖²``,
   the share of ``X_k`` the shared basis explains (pooled over the
   matrices); ``"agreement"``: the cosine between ``C_k`` and the weighted
   consensus ``C̄ = Σ p_k C_k``; ``"inverse_variance"``: ``1 / (1 + d_k)``
   with ``d_k`` the mean over directions j of ``z²_{k,j} = ‖C_{k,j} -
   C̄_j‖² / Σ_l p_l ‖C_{l,j} - C̄_j‖²`` (row j's squared deviation in units
   of that direction's weighted cohort variance, a diagonal Mahalanobis
   distance: a typical client has ``d_k ≈ 1``, ``ρ_k ≈ 0.5``; an outlier
   ``ρ_k → 0``); ``"uniform"``: 0 (plain weights). ``"direction"``: one
   ``ρ_{k,j}`` per client and basis direction (option ``direction_score``,
   on ``D_k``): ``"sign_agreement"``: the share of row j of ``D_k`` whose
   entries have the strict sign of the consensus row ``D̄_j``;
   ``"inverse_variance"``: ``1 / (1 + z²_{k,j})``; ``"uniform"``: 0
   (``reliability`` is then unused). Option ``score_with``: score against
   this round's basis (``"current"``), last round's (``"previous"``, what a
   one-pass streamed server can do; round 0 then scores uniformly), or the
   top-r eigenvectors of ``Ḡ_t = β Ḡ_{t-1} + (1 - β) G_t / tr G_t``
   (``"ema"``, ``β`` = option ``basis_decay``; ``Ḡ_0 = G_0 / tr G_0``, so
   ``β = 0`` is ``"current"``). A self-scored basis is self-referential: a
   client with more energy than the rest defines ``U`` and then explains
   itself (tested); ``"previous"`` or ``"ema"`` break the loop.
   ``"direction"`` weighs this round's directions, so it needs ``"current"``.
   Option ``standardize``: z-score the scores over the valid clients (per
   direction), ``ρ ← (ρ - mean) / std`` (0 when std <= 1e-5), so ``τ``
   means the same for scores on [0, 1] and [-1, 1];
4. fusion weights ``α_k ∝ w_k · exp(ρ_k / τ)`` (softmax over valid clients;
   ``τ`` the temperature), per direction ``α_{k,j} ∝ w_k exp(ρ_{k,j} / τ)``;
5. aggregate (option ``fusion``): ``"coefficients"``: ``U C*`` with
   ``C* = Σ_k α_k D_k``, i.e. ``U Uᵀ Σ_k α_k ΔW_k`` (with the local
   projectors decomposed the global model's part outside span(U) is kept:
   only the update is projected); per direction
   ``C*_j = Σ_k α_{k,j} D_{k,j}``. Options ``trim`` (keep each client's
   largest ``1 - trim`` of ``|D_k|``) and ``sign_election`` (TIES's elected
   sign and disjoint mean, weighted by ``α``) act on the ``D_k`` first, see
   ``canonical_coefficients.py``. ``"mean"``: the plain weighted mean
   ``Σ p_k ΔW_k`` (the basis is still computed and handed on: the "momentum
   only" ablation of Fed-CMP; the coefficient options do not apply);
6. the update outside span(U) (option ``residual``): ``"drop"`` it;
   ``"mean"``: add the plain mean's, ``(I - U Uᵀ) Σ_k p_k ΔW_k``;
   ``"feedback"``: carry ``e ← (I - U Uᵀ) Σ_k p_k ΔW_k`` (of the updates
   that took the old ``e``, step 0) to the next round instead, so what one
   round truncates is applied once the basis spans it: error feedback
   (Seide et al., Interspeech 2014; Karimireddy et al., ICML 2019).

Vectors and scalars (biases) are fused by the same ``α`` without a basis
(per direction: ``α_k`` = the mean of ``α_{k,j}`` over all directions).
With full rank the basis spans every update, so ``"explained"`` gives
``ρ_k = 1`` for all and CRA is exactly the weighted mean: with a scalar
``α_k`` CRA is reweighted FedAvg projected on span(U) (the coefficients only
score); ``weighting="direction"``, ``trim`` and ``sign_election`` make the
coefficients themselves carry the fusion. Metrics: ``explained`` (``Σ tr(UᵀGU)
/ Σ tr G``), ``explained_weighted`` (``Σ p_k ‖Uᵀ ΔW_k‖² / Σ p_k ‖ΔW_k‖²``),
``effective_clients`` (``1 / Σ α_k²``, the mean over directions), and the
principal angles to last round's basis (``basis_cos2``, ``basis_max_angle_deg``,
``canonical_basis.py``). The round's bases are kept in :class:`CanonicalState`,
which the round hands to the server transform (``aggregator_state=``):
Fed-CMP's orthogonality-preserved momentum (``server/orthogonal_momentum.py``)
reads them there.

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
  Stoica et al., "Model Merging with SVD to Tie the KnOTS", ICLR 2025.
  Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
  NeurIPS 2023.
  Seide et al., "1-bit stochastic gradient descent and its application to
  data-parallel distributed training of speech DNNs", Interspeech 2014.
  Karimireddy et al., "Error Feedback Fixes SignSGD and other Gradient
  Compression Schemes", ICML 2019.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from fedjax_mm import checks
from fedjax_mm.aggregation import canonical_coefficients as coef
from fedjax_mm.aggregation import canonical_scores as scores
from fedjax_mm.aggregation.base import CohortAggregator
from fedjax_mm.aggregation.canonical_basis import (  # noqa: F401  (re-exported)
    SIDES, CanonicalState, as_matrix, basis_drift, basis_rank, client_gram, decomposed,
    descending_eigh, explained_energy, global_matrices, init_state, is_matrix, moving_gram,
    oriented, top_eigenvectors, weighted_explained)
from fedjax_mm.aggregation.canonical_scores import (  # noqa: F401  (re-exported)
    DIRECTION_SCORES, RELIABILITIES, reliability_scores)
from fedjax_mm.types import PyTree

DECOMPOSITIONS = ("updates", "weights")
FUSIONS = ("coefficients", "mean")
SCORINGS = ("current", "previous", "ema")
WEIGHTINGS = ("client", "direction")
RESIDUALS = ("drop", "mean", "feedback")


def check_options(rank, reliability: str, temperature: float, fusion: str = "coefficients",
                  score_with: str = "current", decompose: str = "updates", *,
                  weighting: str = "client", direction_score: str = "sign_agreement",
                  trim: float = 0.0, sign_election: bool = False, residual: str = "drop",
                  standardize: bool = False, side: str = "input",
                  basis_decay: float = 0.9) -> None:
  """Rejects a bad option with a one-line message naming it (see the module doc)."""
  checks.one_of("reliability", reliability, RELIABILITIES)
  checks.one_of("decompose", decompose, DECOMPOSITIONS)
  checks.one_of("fusion", fusion, FUSIONS)
  checks.one_of("score_with", score_with, SCORINGS)
  checks.number("temperature", temperature, lambda v: math.isfinite(v) and v > 0,
                "> 0 (finite)")
  if rank is not None:
    ok = (lambda v: v >= 1) if isinstance(rank, numbers.Integral) else (lambda v: 0 < v <= 1)
    checks.number("rank", rank, ok, "an int >= 1 or a fraction in (0, 1], or None")
  checks.one_of("weighting", weighting, WEIGHTINGS)
  checks.one_of("direction_score", direction_score, DIRECTION_SCORES)
  checks.one_of("residual", residual, RESIDUALS)
  checks.one_of("side", side, SIDES)
  checks.number("trim", trim, lambda v: 0 <= v < 1, "in [0, 1) (0 = off)")
  checks.number("basis_decay", basis_decay, lambda v: 0 <= v < 1, "in [0, 1)")
  for name, flag in (("sign_election", sign_election), ("standardize", standardize)):
    if not isinstance(flag, bool):
      raise ValueError(f"{name}: must be a bool, got {flag!r}")
  if weighting == "direction" and score_with != "current":
    raise ValueError("weighting: 'direction' weighs this round's basis directions, so it needs "
                     f"score_with='current', got {score_with!r}")
  if fusion == "mean" and (weighting, trim, sign_election, residual) != ("client", 0, False,
                                                                         "drop"):
    raise ValueError("fusion: 'mean' fuses no coefficients, so it needs weighting='client', "
                     "trim=0, sign_election=False and residual='drop', got "
                     f"{weighting!r}, {trim!r}, {sign_election!r} and {residual!r}")


def canonical_fusion(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                     rank: int | float | None = None, reliability: str = "explained",
                     temperature: float = 0.1, fusion: str = "coefficients",
                     score_bases: tuple[jax.Array, ...] | None = None,
                     decompose: str = "updates", params: PyTree | None = None,
                     weighting: str = "client", direction_score: str = "sign_agreement",
                     trim: float = 0.0, sign_election: bool = False, residual: str = "drop",
                     standardize: bool = False, side: str = "input",
                     carried: tuple[jax.Array, ...] | None = None,
                     moving: tuple[tuple[jax.Array, ...], jax.Array] | None = None,
                     basis_decay: float = 0.9) -> tuple[PyTree, dict]:
  """Fuses stacked client updates in a shared canonical basis (see the module doc).

  Args:
    updates: pytree of ``[C, ...]`` client updates.
    weights: ``[C]`` non-negative aggregation weights.
    mask: ``[C]`` bool, False for padding/excluded clients (no influence).
    rank: basis size per matrix: None = full (``m``), an int ``r`` (capped at
      ``m``), or a float in (0, 1] = that fraction of ``m`` (at least 1).
    reliability, fusion, decompose, weighting, direction_score, residual,
      side: one of ``RELIABILITIES``, ``FUSIONS``, ... (the module doc).
    temperature: τ > 0 of the softmax over reliabilities.
    score_bases: bases to score reliabilities against (default: this round's).
    params: the round's global model (one client's structure); needed by
      ``decompose="weights"``.
    trim, sign_election, standardize: the module doc, steps 3 and 5.
    carried: ``residual="feedback"``: last round's residuals ``e`` (``m x n``).
    moving: ``score_with="ema"``: last round's ``(Ḡ per matrix, has_basis)``.
    basis_decay: β of the moving Gram.

  Returns:
    ``(aggregate, info)``: ``info["explained"]`` is the share of the cohort's
    decomposed energy the bases span (1 at full rank), ``"explained_weighted"``
    that of the updates, weighted by p; ``info["alpha"]`` the ``[C]`` (or
    ``[C, Σ r]``) fusion weights, ``"effective_clients"``, ``info["bases"]``
    the bases; ``"residuals"`` and ``"moving_grams"`` the state to carry
    (empty unless ``carried``/``moving``).
  """
  check_options(rank, reliability, temperature, fusion, decompose=decompose,
                weighting=weighting, direction_score=direction_score, trim=trim,
                sign_election=sign_election, residual=residual, standardize=standardize,
                side=side, basis_decay=basis_decay)
  mask = mask.astype(bool)
  w = jnp.where(mask, weights.astype(jnp.float32), 0.0)
  p = w / jnp.maximum(jnp.sum(w), 1e-30)
  leaves, treedef = jax.tree.flatten(updates)
  deltas = [jnp.where(mask[:, None, None], as_matrix(x, 1), 0.0).astype(jnp.float32)
            for x in leaves if is_matrix(x, 1)]
  if residual == "feedback" and carried is None:   # a direct call: no residual yet
    carried = tuple(jnp.zeros(d.shape[1:], jnp.float32) for d in deltas)
  if carried is not None:   # error feedback: every valid update takes the residual
    deltas = [jnp.where(mask[:, None, None], d + e[None], 0.0) for d, e in zip(deltas, carried)]
  deltas = [oriented(d, side) for d in deltas]
  mats = decomposed(decompose, deltas, [oriented(g, side) for g in
                                        global_matrices(decompose, params)], mask)
  grams = [client_gram(x) for x in mats]
  bases = tuple(top_eigenvectors(g, basis_rank(rank, g.shape[0])) for g in grams)
  moving_grams = ()
  if moving is not None:
    moving_grams = tuple(moving_gram(a, g, moving[1], basis_decay)
                         for a, g in zip(moving[0], grams))
    score_bases = tuple(top_eigenvectors(a, u.shape[1]) for a, u in zip(moving_grams, bases))
  score = bases if score_bases is None else score_bases
  if weighting == "client":
    rho = reliability_scores(reliability, mats, score, p)
  else:
    rho = scores.direction_scores(direction_score, scores.coefficients(score, deltas), p)
  if standardize:
    rho = scores.standardized(rho, mask)
  alpha = scores.fusion_weights(rho, w, mask, temperature)
  vector_mix = p if fusion == "mean" else (alpha if alpha.ndim == 1 else jnp.mean(alpha, 1))
  in_coefficients = weighting == "direction" or trim > 0 or sign_election
  out, residuals, it = [], [], iter(zip(bases, deltas, coef.direction_slices(bases)))
  for x in leaves:
    if not is_matrix(x, 1):
      safe = jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
      out.append(jnp.tensordot(vector_mix.astype(x.dtype), safe, axes=1))
      continue
    u, d, cols = next(it)
    if fusion == "mean":
      fused = jnp.einsum("c,cmn->mn", p, d)
    elif in_coefficients:   # U C*, the coefficients fused entry by entry
      a = alpha if alpha.ndim == 1 else alpha[:, cols]
      fused = coef.fuse_matrix(u, d, a, trim=trim, sign_election=sign_election)
    else:                    # U Uᵀ Σ α_k ΔW_k (= U Σ α_k C_k for updates)
      fused = jnp.einsum("c,cmn->mn", alpha, d)
      fused = u @ (u.T @ fused)
    if residual != "drop":
      mean = jnp.einsum("c,cmn->mn", p, d)
      outside = mean - u @ (u.T @ mean)
      if residual == "mean":
        fused = fused + outside
      else:   # no valid client: nothing was applied, keep the carried residual
        residuals.append(jnp.where(jnp.any(mask), oriented(outside, side),
                                   carried[len(residuals)]))
    out.append(oriented(fused, side).reshape(x.shape[1:]).astype(x.dtype))
  info = {"explained": explained_energy(bases, grams), "alpha": alpha, "bases": bases,
          "explained_weighted": weighted_explained(bases, deltas, p),
          "effective_clients": scores.effective_clients(alpha),
          "residuals": tuple(residuals), "moving_grams": moving_grams}
  return jax.tree.unflatten(treedef, out), info


def canonical_aggregator(*, rank: int | float | None = None, reliability: str = "explained",
                         temperature: float = 0.1, fusion: str = "coefficients",
                         score_with: str = "current", decompose: str = "updates",
                         **variants) -> CohortAggregator:
  """CRA on the stacked cohort; its state keeps the round's bases (for OPM).

  Args:
    rank, reliability, temperature, fusion, score_with, decompose: see
      :func:`canonical_fusion`.
    **variants: ``weighting``, ``direction_score``, ``trim``,
      ``sign_election``, ``residual``, ``standardize``, ``side``,
      ``basis_decay`` (the module doc).
  """
  check_options(rank, reliability, temperature, fusion, score_with, decompose, **variants)
  side, residual = variants.get("side", "input"), variants.get("residual", "drop")
  fusion_options = {k: v for k, v in variants.items() if k not in ("basis_decay",)}

  def aggregate(state: CanonicalState, deltas, weights, mask, key, params):
    del key
    previous = state.bases if score_with == "previous" else None
    if previous is not None:   # round 0 has no previous basis: score uniformly
      previous = tuple(jnp.where(state.has_basis, u, 0.0) for u in previous)
    result, info = canonical_fusion(
        deltas, weights, mask, rank=rank, reliability=reliability, temperature=temperature,
        fusion=fusion, score_bases=previous, decompose=decompose, params=params,
        carried=state.residuals if residual == "feedback" else None,
        moving=(state.ema_grams, state.has_basis) if score_with == "ema" else None,
        basis_decay=variants.get("basis_decay", 0.9), **fusion_options)
    new_state = CanonicalState(bases=info["bases"], has_basis=jnp.ones((), bool),
                               residuals=info["residuals"], ema_grams=info["moving_grams"])
    metrics = {"explained": info["explained"], "explained_weighted": info["explained_weighted"],
               "effective_clients": info["effective_clients"],
               **basis_drift(info["bases"], state.bases)}
    return result, new_state, metrics

  return CohortAggregator(
      name="canonical", init=lambda t: init_state(t, rank, side, residual, score_with),
      aggregate=aggregate)
