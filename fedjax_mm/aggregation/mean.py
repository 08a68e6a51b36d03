"""Weighted-mean aggregation, streamed chunk by chunk over the cohort.

A mean is a ratio of sums, so the cohort can be reduced one chunk at a time
with memory O(chunk x model) instead of O(cohort x model). The result is
exactly FedAvg's example-weighted average when weights are example counts.

References:
  McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data" (FedAvg), AISTATS 2017; arXiv:1602.05629.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_mm.aggregation.base import StreamingAggregator, no_state
from fedjax_mm.registry import Part
from fedjax_mm.types import PyTree


class MeanAccumulator(NamedTuple):
  weighted_sum: PyTree
  weight_sum: jax.Array


def weighted_mean() -> StreamingAggregator:
  """``sum_k w_k delta_k / sum_k w_k`` (zero delta when all weights are 0)."""

  def start(state, template: PyTree, key) -> MeanAccumulator:
    del state, key
    return MeanAccumulator(optax.tree.zeros_like(template), jnp.zeros((), jnp.float32))

  def accumulate(acc: MeanAccumulator, deltas: PyTree, weights: jax.Array):
    chunk_sum = jax.tree.map(
        lambda d: jnp.tensordot(weights.astype(d.dtype), d, axes=1), deltas)
    return MeanAccumulator(optax.tree.add(acc.weighted_sum, chunk_sum),
                           acc.weight_sum + jnp.sum(weights))

  def finalize(state, acc: MeanAccumulator, key):
    del key
    scale = jnp.where(acc.weight_sum > 0, 1.0 / jnp.maximum(acc.weight_sum, 1e-30), 0.0)
    mean = jax.tree.map(lambda s: (s * scale).astype(s.dtype), acc.weighted_sum)
    return mean, state, {}

  def summand(delta: PyTree, weight: jax.Array) -> MeanAccumulator:
    return MeanAccumulator(jax.tree.map(lambda d: weight.astype(d.dtype) * d, delta),
                           weight.astype(jnp.float32))

  return StreamingAggregator(name="mean", init=no_state, start=start,
                             accumulate=accumulate, finalize=finalize, summand=summand)


PART = Part("mean", weighted_mean, "mean",
            "weighted mean, streamed chunk by chunk (FedAvg; McMahan et al., 2017)")
