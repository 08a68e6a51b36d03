"""Keyed pseudorandom permutations of ``[0, n)`` computed index by index.

A client's local data order must be a fresh shuffle each round, but shuffling
by sorting costs O(n) per client and would make the cohort gather's cost
depend on the largest client. A keyed bijection evaluated only at the
positions a client actually consumes costs O(steps x batch) instead, is
jit-friendly (``n`` may be a traced value) and vmaps over clients.

Construction: a balanced Feistel network on ``2h`` bits (the smallest even
bit width with ``4**h >= n``), made a bijection of ``[0, n)`` by cycle walking
(re-apply while the image falls outside the range; since ``4**h < 4n`` the
expected number of walks is below 4).

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


def _feistel(x: jax.Array, half_bits: jax.Array, keys: jax.Array) -> jax.Array:
  mask = (jnp.uint32(1) << half_bits) - jnp.uint32(1)
  left, right = x >> half_bits, x & mask
  for r in range(NUM_ROUNDS):
    left, right = right, left ^ (_mix32(right ^ keys[..., r]) & mask)
  return (left << half_bits) | right


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
  # Smallest h with 4**h >= n, at least 1 so both halves are non-empty.
  bits = 32 - jax.lax.clz(jnp.maximum(n - 1, 1))
  half_bits = jnp.maximum((bits + 1) // 2, 1).astype(jnp.uint32)
  y = _feistel(x, half_bits, keys)
  y = jax.lax.while_loop(
      lambda y: jnp.any(y >= n),
      lambda y: jnp.where(y >= n, _feistel(y, half_bits, keys), y),
      y,
  )
  return y.astype(jnp.int32)
