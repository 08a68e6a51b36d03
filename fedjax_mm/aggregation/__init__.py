"""Aggregation of the cohort's uploads: streaming and whole-cohort reductions.

The whole-cohort reductions are also plain public functions (stacked pytree
``[C, ...]``, weights ``[C]``, mask ``[C]`` -> aggregate), callable outside a
round: :func:`coordinate_median`, :func:`trimmed_mean`, :func:`krum`,
:func:`geometric_median`.
"""

from __future__ import annotations

import jax.numpy as jnp

from fedjax_mm.aggregation.base import (Aggregator, CohortAggregator, Preprocessor,
                                        StreamingAggregator, stateless)
from fedjax_mm.aggregation.canonical import canonical_fusion
from fedjax_mm.aggregation.clipping import l2_clip
from fedjax_mm.aggregation.coordinatewise import coordinate_median, trimmed_mean
from fedjax_mm.aggregation.geometric_median import geometric_median
from fedjax_mm.aggregation.krum import krum, krum_scores
from fedjax_mm.aggregation.mean import weighted_mean

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median",
               "canonical")


def make_aggregator(kind: str, *, cohort_size: int, trim_fraction: float = 0.1,
                    num_byzantine: int = 0, num_selected: int = 0,
                    smoothing: float = 1e-6, max_iters: int = 100, rank: int = 0,
                    reliability: str = "explained", temperature: float = 0.1) -> Aggregator:
  """An aggregator by name.

  Args:
    kind: one of ``AGGREGATORS``.
    cohort_size: C (Multi-Krum's default selection is ``C - num_byzantine``).
    trim_fraction: trimmed mean's β (dropped at each end per coordinate).
    num_byzantine: f, the number of faulty clients Krum tolerates.
    num_selected: Multi-Krum's m (0: ``C - f``).
    smoothing, max_iters: the geometric median's ν and iteration cap.
    rank, reliability, temperature: canonical fusion's basis size per matrix
      (0: full), reliability score and softmax temperature (Fed-CMP's CRA,
      a reconstruction: see ``aggregation/canonical.py``).
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

    def reduce_canonical(d, w, mask):
      result, info = canonical_fusion(d, w, mask, rank=rank or None, reliability=reliability,
                                      temperature=temperature)
      return result, {"explained": info["explained"]}

    return stateless(kind, reduce_canonical)
  raise ValueError(f"aggregation kind must be one of {AGGREGATORS}, got {kind!r}")


__all__ = ["AGGREGATORS", "canonical_fusion", "Aggregator", "CohortAggregator", "Preprocessor",
           "StreamingAggregator", "coordinate_median", "geometric_median", "krum",
           "krum_scores", "l2_clip", "make_aggregator", "stateless",
           "trimmed_mean", "weighted_mean"]
