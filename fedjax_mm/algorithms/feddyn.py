"""FedDyn: federated learning with dynamic regularization.

Each client k keeps the gradient ``g_k = ∇L_k(θ_k)`` of its last local model
(zero before it first trains). In round t, from the server model ``θ``, it
minimizes the dynamically regularized objective

    L_k(θ') − ⟨g_k, θ'⟩ + (α/2) ‖θ' − θ‖²

by local steps on its gradient ``∇L_k(θ') − g_k + α (θ' − θ)`` (the
correction hook of :func:`~fedjax_mm.algorithms.base.local_training`), then
sets ``g_k ← g_k − α (θ_k − θ)`` (the first-order condition of that
minimum). The server keeps ``h`` (zero at first) and, over the cohort P of
the m clients,

    h ← h − (α/m) Σ_{k ∈ P} (θ_k − θ),      θ ← (1/|P|) Σ_{k ∈ P} θ_k − h / α.

In our sign convention (``Δ_k = θ − θ_k``) the server's pseudo-gradient is
``mean(Δ_k) + h / α`` with ``h ← h + α Σ_k w_k Δ_k / W``, ``W`` the sum of
all m clients' aggregation weights: with ``aggregation.weighting=uniform``
(``w_k = 1``, ``W = m``, the mean unweighted) and a FedAvg server at learning
rate 1 this is the paper's Algorithm 1 exactly; example-count weights
generalize it to the example-weighted objective, as SCAFFOLD does here.
Clients upload ``w_k Δ_k`` as the extra ``weighted_delta`` (the round sums
extras over counted clients). A client that took no step has ``θ_k = θ`` and
keeps its ``g_k``.

References:
  Acar, Zhao, Matas Navarro, Mattina, Whatmough, Saligrama, "Federated
  Learning Based on Dynamic Regularization", ICLR 2021; arXiv:2111.04263
  (Algorithm 1).
"""

from __future__ import annotations

import jax
import optax

from fedjax_mm import checks
from fedjax_mm import client as client_lib
from fedjax_mm.algorithms.base import Aggregates, Algorithm, ClientWork, ServerWork
from fedjax_mm.registry import Part

WEIGHTED_DELTA = "weighted_delta"


def feddyn(alpha: float = 0.01) -> Algorithm:
  """FedDyn with regularization strength ``alpha`` (> 0, finite).

  Example:
    >>> algorithm = feddyn(alpha=0.01)   # with server.kind=fedavg, lr 1
  """
  checks.number("alpha", alpha, lambda v: 0 < v < float("inf"), "> 0")

  def init_state(trainable):
    return optax.tree.zeros_like(trainable)

  def client_update(ctx: client_lib.LocalContext, slot: client_lib.ClientSlot, g_k):
    correction = lambda grads, params: jax.tree.map(
        lambda g, gk, w, w0: g - gk + alpha * (w - w0), grads, g_k, params, ctx.trainable)
    carry = client_lib.local_steps(ctx, slot, correction)
    result = client_lib.client_final(ctx.trainable, carry, slot.size, slot.weight)
    # θ_k − θ = −Δ_k, so g_k − α (θ_k − θ) = g_k + α Δ_k.
    new_g_k = jax.tree.map(lambda g, d: g + alpha * d, g_k, result.delta)
    weighted = jax.tree.map(lambda d: result.weight * d, result.delta)
    result = result.replace(extras={WEIGHTED_DELTA: weighted})
    return result, new_g_k, {"client_gradient_norm": optax.tree.norm(new_g_k)}

  def server_init(trainable):
    return optax.tree.zeros_like(trainable)

  def finalize(h, agg: Aggregates):
    scale = alpha / jax.numpy.maximum(agg.population_weight, 1e-30)
    new_h = jax.tree.map(lambda hs, s: hs + scale * s, h, agg.extras[WEIGHTED_DELTA])
    pseudo = jax.tree.map(lambda d, hs: d + hs / alpha, agg.delta, new_h)
    return pseudo, new_h, {"h_norm": optax.tree.norm(new_h)}

  return Algorithm(
      name="feddyn",
      client=ClientWork(init_state=init_state, update=client_update),
      # Clients need only θ (in the context), not h.
      server=ServerWork(init=server_init, broadcast=lambda h: (), finalize=finalize))


PART = Part("feddyn", feddyn, "FedDyn",
            "dynamic regularization aligns local and global optima (Acar et al., ICLR 2021)")
