"""Central Gaussian noise on a sum-decomposable aggregate (the Gaussian mechanism's last step).

The server (or the secure-sum's output) adds ``N(0, σ²)`` independently to
every coordinate of the aggregate. Around the weighted mean this is
noise of standard deviation ``σ · W`` on the weighted sum (``W`` the round's
weight sum); DP-FedAvg (McMahan et al., 2018) sets the sum's noise to
``z · C`` with clipping norm ``C`` and divides by a *fixed* denominator,
which issue 19 builds on this wrapper with its accountant. It wraps only a
sum-decomposable aggregator: the Gaussian mechanism's sensitivity argument
is about a sum of clipped terms, not a median's or Krum's.

Keys: the inner aggregator gets ``fold_in(key, 0)``, the noise
``fold_in(key, 1)`` of the round's aggregator key (same seed, same noise on
any mesh, after a resume).

References:
  Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014
  (the Gaussian mechanism). McMahan, Ramage, Talwar, Zhang, "Learning
  Differentially Private Recurrent Language Models", ICLR 2018.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fedjax_mm import checks
from fedjax_mm.aggregation.base import Aggregator, StreamingAggregator, require_sum
from fedjax_mm.registry import Part
from fedjax_mm.types import PyTree


def gaussian_noise(inner: Aggregator, stddev: float = 1e-3) -> StreamingAggregator:
  """``inner``'s aggregate plus ``N(0, stddev²)`` per coordinate.

  Args:
    inner: a sum-decomposable streaming aggregator (``summand`` set).
    stddev: the noise's standard deviation on the aggregate, finite and > 0.

  Metrics: ``gaussian_noise/norm`` (the L2 norm of the noise added).

  Example:
    >>> agg = gaussian_noise(weighted_mean(), stddev=1e-3)   # doctest: +SKIP
  """
  checks.number("stddev", stddev, lambda v: v > 0 and math.isfinite(v), "finite and > 0")
  inner = require_sum("gaussian_noise", inner,
                      "is the Gaussian mechanism on a sum of bounded terms")

  def start(state, params: PyTree, key: jax.Array):
    return inner.start(state, params, jax.random.fold_in(key, 0))

  def finalize(state, acc, key: jax.Array):
    aggregate, new_state, metrics = inner.finalize(state, acc, jax.random.fold_in(key, 0))
    leaves, treedef = jax.tree.flatten(aggregate)
    noise_key = jax.random.fold_in(key, 1)
    noise = [stddev * jax.random.normal(jax.random.fold_in(noise_key, i), x.shape, jnp.float32)
             for i, x in enumerate(leaves)]
    noisy = treedef.unflatten([(x + n).astype(x.dtype) for x, n in zip(leaves, noise)])
    norm = jnp.sqrt(sum(jnp.sum(n * n) for n in noise))
    metrics = {**{f"{inner.name}/{k}": v for k, v in metrics.items()}, "norm": norm}
    return noisy, new_state, metrics

  return StreamingAggregator(name="gaussian_noise", init=inner.init, start=start,
                             accumulate=inner.accumulate, finalize=finalize,
                             summand=inner.summand)


PART = Part("gaussian_noise", gaussian_noise, "central noise",
            "add N(0, stddev^2) per coordinate to a sum-decomposable aggregate (central DP)",
            context=("inner",))
