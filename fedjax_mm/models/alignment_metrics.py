"""Zero-shot caption-ranking metrics of the Fed-MA evaluation.

Holds :func:`alignment_metrics`: from the scores a model gives a true caption
and candidates that each change one attribute (lower is better), the
all-candidates accuracy and the per-attribute pairwise accuracies with their
counts. :meth:`fedjax_mm.models.mllm.MLLM.metrics` feeds it caption NLLs or
similarities.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def alignment_metrics(scores: jax.Array, probe_attr: jax.Array,
                      attribute_names: Sequence[str] = ()) -> dict[str, jax.Array]:
  """Zero-shot caption-ranking accuracies from candidate scores.

  Args:
    scores: ``[B, P]``, lower is better; index 0 is the true caption.
    probe_attr: ``[B, P]`` attribute index changed by each candidate (-1 for
      the true caption, < -1 for a padding slot, which is ignored).
    attribute_names: names of attribute indices 0, 1, ...

  Returns:
    ``accuracy``: 1.0 iff the true caption scores strictly lower than every
    real candidate. For each attribute ``a`` (name ``n``): ``acc_n``, the
    fraction of candidates that changed ``a`` the true caption beats (pairwise
    accuracy), and ``n_n``, 1.0 if the example has such a candidate (0 makes
    ``acc_n`` 0): the exact mean over examples is ``sum(acc_n) / sum(n_n)``.
  """
  beats = scores[:, :1] < scores[:, 1:]
  attr = probe_attr[:, 1:]
  real = attr >= 0
  out = {"accuracy": jnp.all(beats | ~real, axis=-1).astype(jnp.float32)}
  for a, name in enumerate(attribute_names):
    has = (attr == a).astype(jnp.float32)
    count = jnp.sum(has, -1)
    out[f"acc_{name}"] = jnp.sum(beats * has, -1) / jnp.maximum(count, 1.0)
    out[f"n_{name}"] = (count > 0).astype(jnp.float32)
  return out
