"""Aggregation of the cohort's uploads: streaming and whole-cohort reductions.

The whole-cohort reductions are also plain public functions (stacked pytree
``[C, ...]``, weights ``[C]``, mask ``[C]`` -> aggregate), callable outside a
round: :func:`coordinate_median`, :func:`trimmed_mean`, :func:`krum`,
:func:`geometric_median`, :func:`canonical_fusion`, :func:`ties_merge`,
:func:`knots_merge`.
"""

from __future__ import annotations

import jax.numpy as jnp

from fedjax_mm.aggregation.base import (Aggregator, CohortAggregator, Preprocessor,
                                        StreamingAggregator, stack_bytes, stateless)
from fedjax_mm.aggregation.canonical import (CanonicalState, canonical_aggregator,
                                             canonical_fusion)
from fedjax_mm.aggregation.canonical_streamed import canonical_streaming
from fedjax_mm.aggregation.clipping import l2_clip
from fedjax_mm.aggregation.coordinatewise import coordinate_median, trimmed_mean
from fedjax_mm.aggregation.geometric_median import geometric_median
from fedjax_mm.aggregation.knots import knots_merge
from fedjax_mm.aggregation.krum import krum, krum_scores
from fedjax_mm.aggregation.mean import weighted_mean
from fedjax_mm.aggregation.ties import ties_merge

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median",
               "canonical", "ties", "knots")


def make_aggregator(kind: str, *, cohort_size: int, trim_fraction: float = 0.1,
                    num_byzantine: int = 0, num_selected: int = 0,
                    smoothing: float = 1e-6, max_iters: int = 100, rank: int = 0,
                    reliability: str = "explained", temperature: float = 0.1,
                    fusion: str = "coefficients", score_with: str = "current",
                    decompose: str = "updates",
                    streamed: bool = False, density: float = 0.2, merge_scale: float = 1.0,
                    knots_merge_kind: str = "ties", knots_rank: int = 0) -> Aggregator:
  """An aggregator by name.

  Args:
    kind: one of ``AGGREGATORS``.
    cohort_size: C (Multi-Krum's default selection is ``C - num_byzantine``).
    trim_fraction: trimmed mean's β (dropped at each end per coordinate).
    num_byzantine: f, the number of faulty clients Krum tolerates.
    num_selected: Multi-Krum's m (0: ``C - f``).
    smoothing, max_iters: the geometric median's ν and iteration cap.
    rank, reliability, temperature, fusion, score_with: canonical fusion's
      basis size per matrix (0: full), reliability score, softmax
      temperature, fusion and scoring basis (Fed-CMP's CRA, a reconstruction:
      see ``aggregation/canonical.py``).
    decompose: canonical only: decompose the ``"updates"`` or the local
      models (``"weights"``).
    streamed: canonical only: the streamed second-moment path (scores with
      last round's basis) instead of the stacked one.
    density, merge_scale: TIES's kept fraction per client and λ (also KnOTS's,
      on the aligned coefficients).
    knots_merge_kind, knots_rank: KnOTS's merge of the aligned coefficients
      (``"ties"`` or ``"mean"``) and SVD rank per matrix (0: full).
  """
  if kind == "mean":
    return weighted_mean()
  if kind == "median":
    return stateless("median", lambda d, w, m: (coordinate_median(d, w, m), {}))
  if kind == "trimmed_mean":
    return stateless("trimmed_mean", lambda d, w, m: (
        trimmed_mean(d, w, m, trim_fraction=trim_fraction), {}))
  if kind in ("krum", "multi_krum"):
    m = 1 if kind == "krum" else (num_selected or max(cohort_size - num_byzantine, 1))

    def reduce_krum(d, w, mask):
      result, selected = krum(d, w, mask, num_byzantine=num_byzantine, num_selected=m)
      return result, {"num_selected": jnp.sum(selected).astype(jnp.float32)}

    return stateless(kind, reduce_krum)
  if kind == "geometric_median":

    def reduce_gm(d, w, mask):
      result, iterations = geometric_median(d, w, mask, smoothing=smoothing,
                                            max_iters=max_iters)
      return result, {"iterations": jnp.asarray(iterations, jnp.float32)}

    return stateless(kind, reduce_gm)
  if kind == "canonical":
    options = dict(rank=rank or None, reliability=reliability, temperature=temperature,
                   fusion=fusion, decompose=decompose)
    if streamed:
      if score_with != "previous":
        raise ValueError("score_with: the streamed canonical path scores clients before this "
                         "round's basis exists, so it must be 'previous', got "
                         f"{score_with!r}")
      return canonical_streaming(**options)
    return canonical_aggregator(score_with=score_with, **options)
  if kind == "ties":
    return stateless(kind, lambda d, w, m: ties_merge(d, w, m, density=density,
                                                      scale=merge_scale))
  if kind == "knots":
    return stateless(kind, lambda d, w, m: knots_merge(
        d, w, m, merge=knots_merge_kind, density=density, scale=merge_scale,
        rank=knots_rank or None))
  raise ValueError(f"aggregation kind must be one of {AGGREGATORS}, got {kind!r}")


__all__ = ["AGGREGATORS", "CanonicalState", "canonical_aggregator", "canonical_fusion",
           "canonical_streaming", "Aggregator", "CohortAggregator", "Preprocessor",
           "StreamingAggregator", "coordinate_median", "geometric_median", "krum",
           "knots_merge", "krum_scores", "l2_clip", "make_aggregator", "stack_bytes", "stateless",
           "ties_merge", "trimmed_mean", "weighted_mean"]
