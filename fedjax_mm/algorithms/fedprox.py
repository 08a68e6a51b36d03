"""FedProx: local training with a proximal term towards the global model.

Client k minimizes ``F_k(w) + μ/2 ‖w − w^t‖²`` from ``w^t``, so every local
gradient gets ``μ (w − w^t)`` added before the client optimizer; the server
averages as FedAvg. ``μ = 0`` is FedAvg exactly.

Adding the term to the gradient (not to the loss) keeps the per-example loss
and its metrics unchanged, and is the same optimization.

References:
  Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
  Heterogeneous Networks", MLSys 2020; arXiv:1812.06127.
"""

from __future__ import annotations

import jax

from fedjax_mm import checks
from fedjax_mm.algorithms.base import Algorithm, local_training, stateless_server
from fedjax_mm.registry import Part


def fedprox(mu: float = 0.01) -> Algorithm:
  """FedProx with proximal coefficient ``mu`` (>= 0, finite; 0 is FedAvg).

  Example:
    >>> algorithm = fedprox(mu=0.01)
  """
  checks.number("mu", mu, lambda v: 0 <= v < float("inf"), ">= 0")

  def make_correction(ctx, state):
    del state
    return lambda grads, params: jax.tree.map(
        lambda g, w, w0: g + mu * (w - w0), grads, params, ctx.trainable)

  return Algorithm(name="fedprox", client=local_training(make_correction),
                   server=stateless_server())


PART = Part("fedprox", fedprox, "FedProx",
            "local steps with a proximal term mu/2 |w - w_global|^2 (Li et al., MLSys 2020)")
