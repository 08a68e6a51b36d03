"""KnOTS: merging client updates in a shared SVD basis (a Fed-CMP baseline).

From the paper (Stoica et al., ICLR 2025) and its reference code, per weight
matrix over the clients k with updates ΔW_k (``m x n``):

1. concatenate ``M = [ΔW_1 | ... | ΔW_C]`` (``m x nC``) and take the thin
   SVD ``M = U S Vᵀ``; the columns of ``Vᵀ`` split into per-client blocks
   ``V_kᵀ`` (``r x n``) with ``ΔW_k = U S V_kᵀ``: every update is now
   expressed in one aligned basis ``U``;
2. merge the per-client representations with an off-the-shelf method
   (``merge``: ``"ties"``, the paper's KnOTS-TIES, or ``"mean"``). The
   paper's text merges the ``V_k`` and multiplies by ``U S``; its reference
   code merges ``S V_kᵀ`` (singular values applied) and multiplies by ``U``,
   which we follow (identical for ``"mean"``; for TIES the trim then ranks
   entries by their contribution). As in the code, the TIES trim is global
   over the concatenation of a client's blocks of *all* matrices, and
   singular directions without support (``s ≈ 0``) are dropped, so they
   neither count in the trim budget nor take part in the merge;
3. reconstruct ``U · merged`` and scale it by λ (``scale``; the code's
   ``scaling_coeffs`` multiplies the merged representation, e.g. 0.6 for
   ViT-B/32, found by a search on validation data; λ = 1 here by default).

With ``merge="mean"`` and full rank the result is exactly the weighted mean
of the updates (``U Σ_k p_k S V_kᵀ = Σ_k p_k ΔW_k``): KnOTS only changes
the result through a non-linear merge (TIES) or a truncated ``rank``.

Our choices:

* layout: leaves with two or more dimensions per client are flattened to
  ``m x n`` over their last axis (as ``canonical.py``). For a flax
  ``[in, out]`` kernel the shared basis ``U`` thus spans the *input* side;
  the paper's torch ``[out, in]`` weights share the output side (its code's
  ``concat_across_output=False`` is our layout).
* other leaves (biases, scalars) are merged by the base method directly in
  their own pool (TIES: its own global trim); the reference code appends a
  bias as an extra column of its weight, which a pytree cannot pair.
* support: a direction is kept when ``s² > max(s²) · max(m, nC) · ε₃₂``
  (the rank tolerance of the Gram matrix, C the valid clients; the code keeps ``s > 1e-5``, an
  absolute cut unsuited to small federated updates); ``rank`` keeps at most
  the top-``r`` (capped at ``min(m, nC)``).
* computation: ``U`` and ``S²`` are the eigenpairs of ``Σ_k ΔW_k ΔW_kᵀ`` and
  ``S V_kᵀ = Uᵀ ΔW_k`` (the same thin SVD): padding clients then add exact
  zeros, so the result does not depend on how far the cohort was padded (a
  direct SVD of ``[ΔW_1 | ... | 0 | 0]`` differs in the last bits, which
  TIES' discrete trim amplifies across rounds; the contract suite caught it).
* weights enter only the merge (as in ``ties.py``; the SVD is unweighted,
  the paper having no weights); masked clients' columns are zeroed with
  ``jnp.where`` before the SVD (so they change neither ``U`` nor ``S``) and
  their blocks are excluded from the merge.

Reference:
  Stoica, Ramesh, Ecsedi, Choshen, Hoffman, "Model Merging with SVD to Tie
  the KnOTS", ICLR 2025 (arXiv:2410.19735).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mm import checks
from fedjax_mm.aggregation.base import CohortAggregator, stateless
from fedjax_mm.registry import Part
from fedjax_mm.aggregation import canonical
from fedjax_mm.aggregation.ties import (check_options, client_weights, elect_and_merge,
                                        flatten_masked, trim, unflatten_like, weighted_sum)
from fedjax_mm.types import PyTree

MERGES = ("ties", "mean")


def _svd_blocks(x: jax.Array, rank: int | None, num_valid: jax.Array):
  """``U [m, m]``, blocks ``S V_kᵀ [C, m, n]`` and support ``[m]`` of one leaf.

  ``U`` and ``S²`` are the eigenpairs of ``M Mᵀ = Σ_k ΔW_k ΔW_kᵀ`` and
  ``S V_kᵀ = Uᵀ ΔW_k`` (from ``M = U S Vᵀ``): the thin SVD of the
  concatenation, computed so that padding clients (zero columns) add exact
  zeros and change nothing, whatever the padded cohort size. A direction is
  supported when ``s² > s_max² · max(m, n C_valid) · ε₃₂`` (the rank
  tolerance of the PSD Gram matrix).
  """
  _, m, n = x.shape
  evals, u = canonical.descending_eigh(canonical.client_gram(x))
  evals = jnp.maximum(evals, 0.0)
  tol = evals[0] * jnp.maximum(m, n * num_valid) * np.finfo(np.float32).eps
  support = (evals > tol) & (jnp.arange(m) < (m if rank is None else min(rank, m)))
  blocks = jnp.einsum("mq,cmn->cqn", u, x, precision=jax.lax.Precision.HIGHEST)
  blocks = jnp.where(support[None, :, None], blocks, 0.0)
  return u, blocks, support, jnp.sqrt(evals)


def _merge_pool(pool: jax.Array, p: jax.Array, mask: jax.Array, merge: str, density: float,
                valid: jax.Array | None = None):
  """Merges ``[C, P]`` rows by the base method; returns ``(merged [P], counts)``."""
  if merge == "mean":
    return weighted_sum(p, pool), {}
  return elect_and_merge(trim(pool, density, valid), p, mask)


def knots_merge(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                merge: str = "ties", density: float = 0.2, scale: float = 1.0,
                rank: int | None = None) -> tuple[PyTree, dict[str, jax.Array]]:
  """KnOTS-merges stacked client updates in a per-matrix SVD basis (module doc).

  Args:
    updates: pytree of ``[C, ...]`` client updates.
    weights: ``[C]`` non-negative aggregation weights (uniform = the paper).
    mask: ``[C]`` bool, False for padding/excluded clients (no influence).
    merge: the method merging the ``S V_kᵀ`` blocks (and the other leaves):
      ``"ties"`` (trim, elect, disjoint mean; ``ties.py``) or ``"mean"``.
    density: TIES' kept fraction in (0, 1] (ignored by ``"mean"``).
    scale: λ > 0, multiplying the merged update.
    rank: top singular triplets kept per matrix (None = all supported).

  Returns:
    ``(aggregate, info)``: ``info["energy"]`` is the share of the matrices'
    squared singular values the kept directions carry (1 at full rank); with
    ``"ties"`` also ``"kept_fraction"`` and ``"agreement"`` as in
    :func:`~fedjax_mm.aggregation.ties.ties_merge` (over the trim pools).
  """
  checks.one_of("merge", merge, MERGES)
  check_options(density, scale)
  if rank is not None:
    checks.number("rank", rank, lambda v: v >= 1, ">= 1 (or None)", integer=True)
  if not jax.tree.leaves(updates):
    raise ValueError("updates must have at least one leaf")
  return _knots(updates, weights, mask, merge=merge, density=density, scale=scale, rank=rank)


@functools.partial(jax.jit, static_argnames=("merge", "density", "scale", "rank"))
def _knots(updates, weights, mask, *, merge, density, scale, rank):
  # Jitted like ties._ties: one program per shape and options.
  leaves, treedef = jax.tree.flatten(updates)
  mask = jnp.asarray(mask, bool)
  p = client_weights(weights, mask)
  num_clients = mask.shape[0]
  is_matrix = [x.ndim >= 3 for x in leaves]
  bases, blocks, supports = [], [], []
  kept_energy = total_energy = jnp.zeros((), jnp.float32)
  for x in (x for x, mat in zip(leaves, is_matrix) if mat):
    x = flatten_masked([x], mask).reshape(num_clients, -1, x.shape[-1])
    u, b, support, s = _svd_blocks(x, rank, jnp.sum(mask))
    bases.append(u)
    blocks.append(b)
    supports.append(jnp.repeat(support, b.shape[2]))
    kept_energy += jnp.sum(jnp.where(support, s**2, 0.0))
    total_energy += jnp.sum(s**2)
  counts = []
  out = [None] * len(leaves)
  if blocks:
    pool = jnp.concatenate([b.reshape(num_clients, -1) for b in blocks], axis=1)
    valid = jnp.concatenate(supports)
    merged, c = _merge_pool(pool, p, mask, merge, density, valid)
    counts.append((c, jnp.sum(valid, dtype=jnp.float32)))
    start, slots = 0, [i for i, mat in enumerate(is_matrix) if mat]
    for i, u, b in zip(slots, bases, blocks):
      size = b.shape[1] * b.shape[2]
      fused = jnp.matmul(u, merged[start:start + size].reshape(b.shape[1:]),
                         precision=jax.lax.Precision.HIGHEST)   # no TF32 on GPUs
      out[i] = (scale * fused).reshape(leaves[i].shape[1:]).astype(leaves[i].dtype)
      start += size
  others = [x for x, mat in zip(leaves, is_matrix) if not mat]
  if others:
    pool = flatten_masked(others, mask)
    merged, c = _merge_pool(pool, p, mask, merge, density)
    counts.append((c, jnp.asarray(pool.shape[1], jnp.float32)))
    fused = iter(unflatten_like(scale * merged, others))
    out = [next(fused) if not mat else o for o, mat in zip(out, is_matrix)]
  info = {"energy": jnp.where(total_energy > 0, kept_energy / jnp.maximum(total_energy, 1e-30),
                              1.0)}
  if merge == "ties":
    nonzero = sum(c["nonzero"] for c, _ in counts)
    total = jnp.sum(mask, dtype=jnp.float32) * sum(size for _, size in counts)
    info["kept_fraction"] = nonzero / jnp.maximum(total, 1.0)
    info["agreement"] = sum(c["agree"] for c, _ in counts) / jnp.maximum(nonzero, 1.0)
  return jax.tree.unflatten(treedef, out), info


def knots_aggregator(merge: str = "ties", density: float = 0.2, scale: float = 1.0,
                     rank: int = 0) -> CohortAggregator:
  """KnOTS over the cohort (``rank`` 0 = full rank per matrix)."""
  checks.one_of("merge", merge, MERGES)
  checks.number("rank", rank, lambda v: v >= 0, ">= 0 (0 = full rank)", integer=True)
  check_options(density, scale)
  return stateless("knots", lambda d, w, m: knots_merge(
      d, w, m, merge=merge, density=density, scale=scale, rank=rank or None))


PART = Part("knots", knots_aggregator, "KnOTS",
            "merging in a shared SVD basis (Stoica et al., ICLR 2025)")
