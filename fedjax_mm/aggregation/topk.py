"""Top-k sparsification of each client's upload, with error feedback.

Client k uploads only the ``k = ceil(fraction · P)`` largest-magnitude
entries of its update (global over all ``P`` parameters of the pytree; the
rest are sent as zeros, which a real system would not transmit). With error
feedback the client keeps what it did not send and adds it back next time it
is sampled:

    v = Δ_k + e_k,     c = top_k(v),     e_k ← v − c,     upload c,

so nothing is lost, only delayed (Stich et al. 2018, Algorithm 1 "memory";
Karimireddy et al. 2019). The residual ``e_k`` is the preprocessor's
per-client state: it lives in ``PopulationState.preprocess`` (``[K, ...]``)
and moves only when the client's upload counts. Ties at the threshold are
broken by ``lax.top_k`` (lowest flat index first), so exactly ``k`` entries
are kept.

References:
  Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018.
  Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other
  Gradient Compression Schemes", ICML 2019.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedjax_mm import checks
from fedjax_mm.aggregation.base import Preprocessor
from fedjax_mm.data.federated import fraction_count
from fedjax_mm.registry import Part


def kept_count(fraction: float, num_params: int) -> int:
  """``ceil(fraction · P)`` by the house's fraction rule, at least 1."""
  return max(1, int(fraction_count(fraction, num_params, rounding="ceil")))


def _sparsify(v: jax.Array, k: int) -> jax.Array:
  _, idx = jax.lax.top_k(jnp.abs(v), k)
  return jnp.zeros_like(v).at[idx].set(v[idx])


def top_k(fraction: float = 0.1, error_feedback: bool = True) -> Preprocessor:
  """Keeps each client's ``fraction`` largest-magnitude update entries.

  Args:
    fraction: the share of parameters sent, in (0, 1] (1 sends everything).
    error_feedback: keep the unsent remainder per client and add it to the
      client's next update (Stich et al.'s memory); False drops it.

  Returns:
    A :class:`Preprocessor` (stateful with ``error_feedback``). Metrics:
    ``top_k/kept`` (share of entries sent) and ``top_k/residual_norm``
    (L2 norm of what stays behind, this round).

  Example:
    >>> pre = top_k(0.01)   # 1% of the entries, with error feedback
  """
  checks.number("fraction", fraction, lambda v: 0 < v <= 1, "in (0, 1]")
  if not isinstance(error_feedback, bool):
    raise ValueError(f"error_feedback: must be True or False, got {error_feedback!r}")

  def compress(delta, residual):
    flat, unravel = ravel_pytree(delta)
    k = kept_count(fraction, flat.size)
    v = flat.astype(jnp.float32) + residual
    sent = _sparsify(v, k)
    left = v - sent
    metrics = {"kept": jnp.float32(k / flat.size), "residual_norm": jnp.linalg.norm(left)}
    return unravel(sent.astype(flat.dtype)), left, metrics

  if not error_feedback:
    def apply(delta, key):
      del key
      size = sum(math.prod(x.shape) for x in jax.tree.leaves(delta))
      sent, _, metrics = compress(delta, jnp.zeros((size,), jnp.float32))
      return sent, metrics
    return Preprocessor(name="top_k", apply=apply)

  def init_state(template):
    # The residual, flat and float32 whatever the parameters' dtype.
    size = sum(math.prod(x.shape) for x in jax.tree.leaves(template))
    return jnp.zeros((size,), jnp.float32)

  def apply_with_memory(delta, key, residual):
    del key
    return compress(delta, residual)

  return Preprocessor(name="top_k", apply=apply_with_memory, init_state=init_state)


PART = Part("top_k", top_k, "top-k",
            "send the largest fraction of entries, keep the rest (error feedback; Stich 2018)")
