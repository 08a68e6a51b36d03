"""Secure summation around a sum-decomposable aggregator: the server sees only masked integers.

The arithmetic of secure aggregation (Bonawitz et al., 2017): each client
encodes its term of the sum (for the weighted mean: ``w_k Δ_k`` and ``w_k``)
in fixed point, ``q = round(t · 2^f)`` as a 32-bit two's-complement integer,
adds a mask, and uploads the result modulo ``2^32``. The masks cancel in the
sum, so the server learns ``Σ_k q_k mod 2^32`` and nothing else; it decodes
``Σ_k q_k · 2^-f`` and hands it to the inner aggregator's ``finalize``.

What is simulated is what changes numbers: rounding to ``f`` fractional
bits (the decoded sum is within ``N · 2^-(f+1)`` of the exact sum of ``N``
terms per coordinate), saturation of a term outside the range ``±2^(31-f)``
and wrap-around of a sum outside it (both counted in ``secure_sum/overflow``
so that a silently wrong aggregate cannot pass unseen). The masks are a
telescoping chain, ``r_s − r_{s+1}`` for the client in slot ``s`` with
``r_s`` uniform on ``[0, 2^32)`` from the round's key: any single upload, and
any sum of fewer than all uploads, is uniform, and the full sum leaves the
residual ``r_0 − r_N`` that the server removes (it stands for the pairwise
masks of the protocol, which cancel exactly; their key agreement, the
dropout recovery and the self masks are issue 19's). The chain makes the
masked sum independent of how the cohort is chunked, bit for bit.

Reconstruction notes: deterministic rounding to nearest (not stochastic),
one bit width (32) and one scale for every leaf; ``frac_bits`` is the option.

References:
  Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
  Machine Learning", CCS 2017.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_mm import checks
from fedjax_mm.aggregation.base import Aggregator, StreamingAggregator, require_sum
from fedjax_mm.registry import Part
from fedjax_mm.types import PyTree

# The largest float32 below 2^31: a term clipped to it converts to int32 exactly
# (2^31 - 1 itself is not a float32 and would round up out of range).
_LIMIT = 2**31 - 128


class SecureAccumulator(NamedTuple):
  """The round's running state: what the server holds, plus one simulation-only check.

  Attributes:
    masked: ``Σ`` of the uploads so far, ``uint32`` leaves shaped like one
      client's term (the only thing a real server would hold).
    clear: the inner aggregator's plain accumulator of the same clients,
      kept only to count wrap-around in ``finalize`` (never aggregated).
    saturated: terms' coordinates clipped to the integer range so far.
    slot: the next client slot (the mask chain's position).
    key: the round's mask key.
  """

  masked: PyTree
  clear: PyTree
  saturated: jax.Array
  slot: jax.Array
  key: jax.Array


def _mask(key: jax.Array, slot: jax.Array, like: PyTree) -> PyTree:
  """``r_slot``: uniform ``uint32`` leaves shaped like ``like`` (one stream per leaf)."""
  leaves, treedef = jax.tree.flatten(like)
  k = jax.random.fold_in(key, slot)
  return treedef.unflatten([jax.random.bits(jax.random.fold_in(k, i), x.shape[1:], jnp.uint32)
                            for i, x in enumerate(leaves)])


def secure_sum(inner: Aggregator, frac_bits: int = 16) -> StreamingAggregator:
  """``inner`` with its sum computed on masked fixed-point integers.

  Args:
    inner: a sum-decomposable streaming aggregator (``summand`` set), e.g.
      the weighted mean; median, Krum or the streamed CRA are refused.
    frac_bits: fractional bits ``f`` of the fixed-point code, in [1, 30];
      the sum's range is ``±2^(31-f)`` per coordinate (with
      ``weighting=num_examples`` the weight sum must fit too: lower ``f`` or
      weight uniformly), its resolution ``2^-f``.

  Metrics: ``secure_sum/overflow`` (coordinates saturated in a term or
  wrapped in the sum; the aggregate is wrong when it is not 0).

  Example:
    >>> agg = secure_sum(weighted_mean(), frac_bits=16)   # doctest: +SKIP
  """
  checks.number("frac_bits", frac_bits, lambda v: 1 <= v <= 30, "in [1, 30]", integer=True)
  inner = require_sum("secure_sum", inner,
                      "sees only the masked sum of the clients' terms")
  scale = float(2**frac_bits)

  def start(state, params: PyTree, key: jax.Array) -> SecureAccumulator:
    clear = inner.start(state, params, jax.random.fold_in(key, 0))
    masked = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.uint32), clear)
    return SecureAccumulator(masked, clear, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                             jax.random.fold_in(key, 1))

  def fixed(t: jax.Array) -> jax.Array:
    return jnp.round(t.astype(jnp.float32) * scale)

  def encode(t: jax.Array) -> jax.Array:
    q = jnp.clip(fixed(t), -_LIMIT, _LIMIT).astype(jnp.int32)
    return jax.lax.bitcast_convert_type(q, jnp.uint32)

  def accumulate(acc: SecureAccumulator, deltas: PyTree, weights: jax.Array):
    terms = jax.vmap(inner.summand)(deltas, weights)
    codes = jax.tree.map(encode, terms)
    saturated = sum(jnp.sum(jnp.abs(fixed(t)) > _LIMIT, dtype=jnp.int32)
                    for t in jax.tree.leaves(terms))
    c = weights.shape[0]
    masks = jax.vmap(lambda s: _mask(acc.key, s, codes))(acc.slot + jnp.arange(c + 1))
    uploads = jax.tree.map(lambda q, r: q + r[:-1] - r[1:], codes, masks)
    masked = jax.tree.map(lambda m, u: m + jnp.sum(u, axis=0, dtype=jnp.uint32),
                          acc.masked, uploads)
    return SecureAccumulator(masked, inner.accumulate(acc.clear, deltas, weights),
                             acc.saturated + saturated, acc.slot + c, acc.key)

  def finalize(state, acc: SecureAccumulator, key: jax.Array):
    first = jax.tree.map(lambda x: x[None], acc.masked)
    r0 = _mask(acc.key, jnp.zeros((), jnp.int32), first)
    rn = _mask(acc.key, acc.slot, first)
    total = jax.tree.map(lambda m, a, b: m - a + b, acc.masked, r0, rn)
    decoded = jax.tree.map(
        lambda t, like: (jax.lax.bitcast_convert_type(t, jnp.int32).astype(jnp.float32)
                         / scale).astype(like.dtype), total, acc.clear)
    wrapped = sum(jnp.sum(jnp.abs(x.astype(jnp.float32)) * scale > _LIMIT, dtype=jnp.int32)
                  for x in jax.tree.leaves(acc.clear))
    aggregate, new_state, metrics = inner.finalize(state, decoded, jax.random.fold_in(key, 0))
    metrics = {**{f"{inner.name}/{k}": v for k, v in metrics.items()},
               "overflow": (acc.saturated + wrapped).astype(jnp.float32)}
    return aggregate, new_state, metrics

  return StreamingAggregator(name="secure_sum", init=inner.init, start=start,
                             accumulate=accumulate, finalize=finalize)


PART = Part("secure_sum", secure_sum, "SecAgg",
            "sum masked fixed-point integers mod 2^32 (Bonawitz et al., 2017); sums only",
            context=("inner",))
