"""Weighted-mean aggregation, streamed chunk by chunk over the cohort.

A mean is a ratio of sums, so the cohort can be reduced one chunk at a time
with memory O(chunk x model) instead of O(cohort x model). The result is
exactly FedAvg's example-weighted average when weights are example counts.

References:
  McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data" (FedAvg), AISTATS 2017; arXiv:1602.05629.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_mm.types import PyTree


class Aggregator(NamedTuple):
  """Reduces per-client deltas ``[C, ...]`` to one delta, chunk by chunk.

  Attributes:
    init: ``template delta -> accumulator``.
    accumulate: ``(acc, deltas [c, ...], weights [c]) -> acc``; called once
      per chunk of the cohort (padding clients have weight 0).
    finalize: ``acc -> (aggregate delta, total weight)``.
    streaming: True when memory is O(chunk); False when the aggregator keeps
      every client's update (robust statistics need the whole stack).
  """

  init: Callable[[PyTree], PyTree]
  accumulate: Callable[[PyTree, PyTree, jax.Array], PyTree]
  finalize: Callable[[PyTree], tuple[PyTree, jax.Array]]
  streaming: bool


class MeanAccumulator(NamedTuple):
  weighted_sum: PyTree
  weight_sum: jax.Array


def weighted_mean() -> Aggregator:
  """``sum_k w_k delta_k / sum_k w_k`` (zero delta when all weights are 0)."""

  def init(template: PyTree) -> MeanAccumulator:
    return MeanAccumulator(optax.tree.zeros_like(template), jnp.zeros((), jnp.float32))

  def accumulate(acc: MeanAccumulator, deltas: PyTree, weights: jax.Array):
    chunk_sum = jax.tree.map(
        lambda d: jnp.tensordot(weights.astype(d.dtype), d, axes=1), deltas)
    return MeanAccumulator(optax.tree.add(acc.weighted_sum, chunk_sum),
                           acc.weight_sum + jnp.sum(weights))

  def finalize(acc: MeanAccumulator):
    scale = jnp.where(acc.weight_sum > 0, 1.0 / jnp.maximum(acc.weight_sum, 1e-30), 0.0)
    mean = jax.tree.map(lambda s: (s * scale).astype(s.dtype), acc.weighted_sum)
    return mean, acc.weight_sum

  return Aggregator(init, accumulate, finalize, streaming=True)
