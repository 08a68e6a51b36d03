"""Keyed pseudorandom permutations of ``[0, n)`` computed index by index.

A client's local data order must be a fresh shuffle each round, but shuffling
by sorting costs O(n) per client and would make the cohort gather's cost
depend on the largest client. A keyed bijection evaluated only at the
positions a client actually consumes costs O(steps x batch) instead, is
jit-friendly (``n`` may be a traced value) and vmaps over clients.

Construction: an unbalanced Feistel network on ``b`` bits (the smallest
width with ``2**b >= n``), made a bijection of ``[0, n)`` by cycle walking
(re-apply while the image falls outside the range; since ``2**b < 2n`` the
expected number of walks is below 2). Under ``vmap`` the walk runs until the
slowest element is in range, so a tight domain matters.

References:
  Luby & Rackoff, "How to construct pseudorandom permutations from
  pseudorandom functions", SIAM J. Comput. 1988 (Feistel networks);
  Black & Rogaway, "Ciphers with arbitrary finite domains", CT-RSA 2002
  (cycle walking).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_ROUNDS = 6


def _mix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a cheap, well-mixing bijection."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def round_keys(key: jax.Array) -> jax.Array:
  """Draws the Feistel round keys ``[NUM_ROUNDS] uint32`` from a PRNG key."""
  return jax.random.bits(key, (NUM_ROUNDS,), jnp.uint32)


def pass_keys(keys: jax.Array, pass_index: jax.Array) -> jax.Array:
  """Independent round keys for pass ``pass_index`` (any int array shape).

  Returns ``pass_index.shape + [NUM_ROUNDS]`` uint32: a cheap hash instead of
  a PRNG split per pass, because it runs once per batch slot.
  """
  salt = _mix32(jnp.asarray(pass_index, jnp.uint32) * jnp.uint32(0x9E3779B9)
                + jnp.uint32(0x7F4A7C15))
  return _mix32(keys ^ salt[..., None])


def _feistel(x: jax.Array, high_bits: jax.Array, low_bits: jax.Array,
             keys: jax.Array) -> jax.Array:
  # Unbalanced Feistel on high_bits + low_bits bits: each round maps
  # (hi, lo) -> (lo, hi ^ F(lo)), a bijection whatever the split, and the
  # halves trade widths every round.
  a, c = high_bits, low_bits
  for r in range(NUM_ROUNDS):
    hi, lo = x >> c, x & ((jnp.uint32(1) << c) - 1)
    x = (lo << a) | (hi ^ (_mix32(lo ^ keys[..., r]) & ((jnp.uint32(1) << a) - 1)))
    a, c = c, a
  return x


def permute(index: jax.Array, n: jax.Array, keys: jax.Array) -> jax.Array:
  """Image of ``index`` under the keyed permutation of ``[0, n)``.

  Args:
    index: int array of positions, each in ``[0, n)`` (others are mapped to
      themselves modulo ``n``).
    n: scalar size of the domain (``n >= 1``; may be traced).
    keys: ``[NUM_ROUNDS]`` or ``index.shape + [NUM_ROUNDS]`` uint32 from
      :func:`round_keys` / :func:`pass_keys` (per-element keys give each
      element its own permutation).

  Returns:
    int32 array shaped like ``index``; for fixed ``(n, keys)`` the map
    ``i -> permute(i, n, keys)`` is a bijection of ``[0, n)``.
  """
  n = jnp.maximum(jnp.asarray(n, jnp.uint32), 1)
  x = jnp.asarray(index, jnp.uint32) % n
  # Smallest b with 2**b >= n (at least 2, so both parts are non-empty):
  # the domain is below 2n and fewer than half the images need a walk.
  bits = jnp.maximum(32 - jax.lax.clz(jnp.maximum(n - 1, 1)), 2).astype(jnp.uint32)
  high, low = bits // 2, bits - bits // 2
  step = lambda y: _feistel(y, high, low, keys)
  y = jax.lax.while_loop(lambda y: jnp.any(y >= n),
                         lambda y: jnp.where(y >= n, step(y), y), step(x))
  return y.astype(jnp.int32)
