"""Per-client L2 clipping of uploads (norm bounding; the building block of DP).

Each client's delta is scaled to norm at most ``C``:
``Δ ← Δ · min(1, C / ‖Δ‖)``. Followed by the weighted mean this is *norm
bounding*, a defence against scaled (boosted) malicious updates; followed by
Gaussian noise it is the sensitivity bound of DP-FedAvg.

References:
  Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated
  Learning?", 2019; arXiv:1911.07963 (norm bounding).
  McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private
  Recurrent Language Models", ICLR 2018 (per-user clipping, DP-FedAvg).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_mm import checks
from fedjax_mm.aggregation.base import Preprocessor
from fedjax_mm.registry import Part


def l2_clip(max_norm: float = 1.0) -> Preprocessor:
  """Scales each client's delta to L2 norm at most ``max_norm`` (> 0).

  Metrics: ``clip/clipped`` (fraction of clients clipped) and
  ``clip/norm`` (mean pre-clipping norm).

  Example:
    >>> pre = l2_clip(1.0)
  """
  checks.number("max_norm", max_norm, lambda v: v > 0, "> 0")

  def apply(delta, key):
    del key
    norm = optax.tree.norm(delta)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    clipped = jax.tree.map(lambda d: (d * scale).astype(d.dtype), delta)
    return clipped, {"clipped": (norm > max_norm).astype(jnp.float32), "norm": norm}

  return Preprocessor(name="clip", apply=apply)


PART = Part("l2_clip", l2_clip, "L2 clip",
            "scale each update to L2 norm <= max_norm (norm bounding; DP's sensitivity)")
