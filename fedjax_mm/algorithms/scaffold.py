"""SCAFFOLD: local steps corrected by control variates (option II).

Server control variate ``c`` and client control variates ``c_i`` estimate
the full and the client's own gradient. Client i starts from ``x`` and takes
``K_i`` local steps on the corrected gradient ``g_i(y) − c_i + c``; then

    c_i⁺ = c_i − c + (x − y_i) / (K_i η_l)        (option II)
    uploads  Δy_i = x − y_i  and  Δc_i = c_i⁺ − c_i.

The server applies its optimizer to the aggregated ``Δy`` (with
``server.optimizer = fedavg`` and learning rate η_g this is the paper's
``x ← x − η_g mean(Δy)`` in our sign convention) and updates

    c ← c + Σ_{i ∈ S} (w_i / W) Δc_i,       W = Σ_{k=1..N} w_k,

``w_k`` the aggregation weights of all N clients, so that ``c`` stays the
``w``-weighted mean of all ``c_k`` (clients never sampled keep ``c_k = 0``).
With uniform weights (``aggregation.weighting = uniform``) this is the
paper's ``c ← c + (1/N) Σ_{i ∈ S} Δc_i`` exactly; with example-count weights
it is its generalization to the example-weighted objective ``Σ_k p_k F_k``
that the weighted mean of ``Δy`` targets (with an unweighted ``c`` the fixed
point would be the optimum of ``(1/N) Σ_k F_k`` instead, inconsistent with
the weights). A client that took no step keeps its ``c_i``.
Client variates live in the population state (``[K, ...]``, gathered and
scattered chunk by chunk), the server variate in the server state.

Option II assumes plain SGD local steps at learning rate η_l (the round's
client learning rate); with momentum or Adam clients the same formula is a
heuristic estimate of the client gradient.

References:
  Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic
  Controlled Averaging for Federated Learning", ICML 2020; arXiv:1910.06378
  (Algorithm 1, option II).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_mm import client as client_lib
from fedjax_mm.algorithms.base import (Aggregates, Algorithm, ClientWork, ServerWork,
                                       require_sgd_clients)
from fedjax_mm.registry import Part

DELTA_CONTROL = "delta_control"


def scaffold(*, client_optimizer: str = "sgd") -> Algorithm:
  """SCAFFOLD with option-II control variates.

  Args:
    client_optimizer: the clients' optimizer (run context): option II
      estimates the client gradient as ``delta / (K_i η_l)``, in gradient
      units only for (momentum) SGD steps, so others are refused.

  Example:
    >>> algorithm = scaffold()   # with server.kind=fedavg, lr = η_g
  """
  require_sgd_clients("scaffold", client_optimizer,
                      "estimates client gradients as delta / (steps x lr) (option II), in "
                      "gradient units only for SGD steps")

  def init_state(trainable):
    return optax.tree.zeros_like(trainable)

  def client_update(ctx: client_lib.LocalContext, slot: client_lib.ClientSlot, c_i):
    c = ctx.broadcast
    correction = lambda grads, params: jax.tree.map(
        lambda g, ci, cs: g - ci + cs, grads, c_i, c)
    carry = client_lib.local_steps(ctx, slot, correction)
    result = client_lib.client_final(ctx.trainable, carry, slot.size, slot.weight)
    steps = carry.num_steps.astype(jnp.float32)
    scale = 1.0 / (jnp.maximum(steps, 1.0) * ctx.learning_rate)
    new_c_i = jax.tree.map(
        lambda ci, cs, d: jnp.where(steps > 0, ci - cs + d * scale, ci),
        c_i, c, result.delta)
    # Uploaded pre-weighted: the round sums extras over the counted clients.
    weighted_delta_c = jax.tree.map(lambda n, o: result.weight * (n - o), new_c_i, c_i)
    result = result.replace(extras={DELTA_CONTROL: weighted_delta_c})
    return result, new_c_i, {"client_control_norm": optax.tree.norm(new_c_i)}

  def server_init(trainable):
    return optax.tree.zeros_like(trainable)

  def finalize(c, agg: Aggregates):
    scale = 1.0 / jnp.maximum(agg.population_weight, 1e-30)
    new_c = jax.tree.map(lambda cs, s: cs + s * scale, c, agg.extras[DELTA_CONTROL])
    return agg.delta, new_c, {"control_norm": optax.tree.norm(new_c)}

  return Algorithm(
      name="scaffold",
      client=ClientWork(init_state=init_state, update=client_update),
      server=ServerWork(init=server_init, broadcast=lambda c: c, finalize=finalize))


PART = Part("scaffold", scaffold, "SCAFFOLD",
            "control variates correct client drift (Karimireddy et al., ICML 2020)",
            context=("client_optimizer",))
