"""FedExP: FedAvg with an adaptive, extrapolating server step size.

Clients train as in FedAvg and upload ``Δ_i = w − w_i``. The server
extrapolates the averaged update by

    η_g = max(1, Σ_i p_i ‖Δ_i‖² / (2 (‖Σ_i p_i Δ_i‖² + ε))),     w ← w − η_g Σ_i p_i Δ_i,

the step that POCS-style extrapolation takes when the clients' updates
disagree (‖mean‖² small next to the mean of ‖Δ_i‖²); ``η_g = 1`` (FedAvg)
when they agree. The paper's Algorithm 1 has uniform ``p_i = 1/M`` over the
M clients of the round; here ``p_i = w_i / Σ_j w_j`` are the aggregation
weights of the counted clients (``aggregation.weighting=uniform`` gives the
paper exactly; example counts are what the authors' code uses too).
``Σ p_i Δ_i`` is the aggregator's output (the weighted mean by default; a
robust aggregator's estimate otherwise).

Composition: the algorithm only scales the pseudo-gradient, so the server
optimizer still applies; ``server.kind=fedavg`` at learning rate 1
(``optax.sgd(1)``) is FedExP exactly. Each client uploads ``w_i ‖Δ_i‖²`` as
the extra ``weighted_sq_norm`` (a scalar; the round sums extras over the
counted clients); it is the norm of the client's own update, before the
preprocess chain (clipping, compression) and outside any aggregator wrapper
(secure sum, central noise), which the aggregate ``Σ p_i Δ_i`` does go through:
under DP or secure aggregation it is an unprotected extra upload.

``ε`` is in squared-update units: once ‖Σ p_i Δ_i‖² ≪ ε the rule is
``max(1, small)``, i.e. FedAvg. Differences from the authors' code (not the
paper): it adds ``M ε`` instead of ``ε`` and decays ε by 0.998² per round;
neither is done here. Evaluating the average of the last two iterates (the
paper's reported model, against FedExP's oscillation) is not done either:
the round reports the last iterate (``ServerState.last_update`` holds what
that would need: ``w − last_update / 2``).

References:
  Jhunjhunwala, Wang, Joshi, "FedExP: Speeding Up Federated Averaging via
  Extrapolation", ICLR 2023; arXiv:2301.09604 (Algorithm 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_mm import checks
from fedjax_mm import client as client_lib
from fedjax_mm.algorithms.base import (Aggregates, Algorithm, ClientWork, ServerWork,
                                       local_training, no_state)
from fedjax_mm.registry import Part

WEIGHTED_SQ_NORM = "weighted_sq_norm"


def fedexp(eps: float = 1e-3) -> Algorithm:
  """FedExP with the step-size denominator's ``eps`` (> 0, finite).

  Args:
    eps: ``ε`` of the step size (the paper's experiments: 1e-3 on the
      CIFAR/CINIC tasks, 1e-1 on EMNIST).

  Example:
    >>> algorithm = fedexp(eps=1e-3)   # with server.kind=fedavg, lr 1
  """
  checks.number("eps", eps, lambda v: v > 0, "> 0")
  plain = local_training()

  def client_update(ctx: client_lib.LocalContext, slot: client_lib.ClientSlot, state):
    result, state, metrics = plain.update(ctx, slot, state)
    # Pre-weighted: the round sums extras, the server divides by the weight sum.
    sq_norm = optax.tree.norm(result.delta, squared=True).astype(jnp.float32)
    return result.replace(extras={WEIGHTED_SQ_NORM: result.weight * sq_norm}), state, metrics

  def finalize(state, agg: Aggregates):
    mean_sq_norm = agg.extras[WEIGHTED_SQ_NORM] / jnp.maximum(agg.weight_sum, 1e-30)
    aggregate_sq_norm = optax.tree.norm(agg.delta, squared=True).astype(jnp.float32)
    eta_g = jnp.maximum(1.0, mean_sq_norm / (2.0 * (aggregate_sq_norm + eps)))
    pseudo = jax.tree.map(lambda d: (eta_g * d).astype(d.dtype), agg.delta)
    return pseudo, state, {"eta_g": eta_g}

  return Algorithm(
      name="fedexp",
      client=ClientWork(init_state=no_state, update=client_update),
      server=ServerWork(init=no_state, broadcast=lambda state: state, finalize=finalize))


PART = Part("fedexp", fedexp, "FedExP",
            "adaptive extrapolating server step max(1, mean|d_i|^2 / 2|mean d|^2) "
            "(Jhunjhunwala et al., ICLR 2023)")
