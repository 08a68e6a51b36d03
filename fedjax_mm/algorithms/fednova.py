"""FedNova: normalized averaging for clients that take different numbers of steps.

With plain averaging, a client that takes more local steps moves further and
pulls the global model towards its own optimum (objective inconsistency).
FedNova divides each client's update by its effective number of steps
``a_i = ‖a_i‖₁`` and rescales the average by the effective steps of the
cohort:

    d_i = Δ_i / a_i,        Δ = τ_eff Σ_i p_i d_i,        τ_eff = Σ_i p_i a_i,

``p_i`` the aggregation weights (normalized). For plain SGD ``a_i = τ_i``, the
client's local step count; for heavy-ball momentum ρ (``optax.sgd`` with
momentum) ``a_i = [τ_i − ρ (1 − ρ^τ_i) / (1 − ρ)] / (1 − ρ)``. With equal
step counts FedNova is FedAvg. Adaptive client optimizers (Adam) have no
such closed form and are rejected by the config.

The client uploads ``d_i`` as its delta (so any aggregator applies to it)
and ``p_i a_i`` (unnormalized, ``weight · a_i``) as an extra; the server
divides that sum by the weight sum to get ``τ_eff``.

References:
  Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency
  Problem in Heterogeneous Federated Optimization", NeurIPS 2020;
  arXiv:2007.07481 (Eq. 6 and Appendix: momentum SGD).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_mm import checks
from fedjax_mm import client as client_lib
from fedjax_mm.algorithms.base import (Aggregates, Algorithm, ClientWork, ServerWork,
                                       no_state, require_sgd_clients)
from fedjax_mm.registry import Part

WEIGHTED_STEPS = "weighted_steps"


def effective_steps(num_steps: jax.Array, momentum: float) -> jax.Array:
  """``‖a_i‖₁`` for ``num_steps`` local steps of SGD with heavy-ball ``momentum``."""
  tau = num_steps.astype(jnp.float32)
  if momentum == 0.0:
    return tau
  rho = momentum
  return (tau - rho * (1.0 - rho ** tau) / (1.0 - rho)) / (1.0 - rho)


def fednova(client_momentum: float = 0.0, *, client_optimizer: str = "sgd") -> Algorithm:
  """FedNova for SGD clients.

  Args:
    client_momentum: the client optimizer's heavy-ball ρ in [0, 1) (run
      context: the normalizer depends on it).
    client_optimizer: the clients' optimizer (run context); FedNova
      normalizes by the effective number of SGD steps, so only (momentum)
      SGD clients are accepted.

  Example:
    >>> algorithm = fednova(client_momentum=0.0)
  """
  momentum = client_momentum
  checks.number("client_momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")
  require_sgd_clients("fednova", client_optimizer,
                      "normalizes by the effective number of SGD steps")

  def client_update(ctx: client_lib.LocalContext, slot: client_lib.ClientSlot, state):
    carry = client_lib.local_steps(ctx, slot)
    result = client_lib.client_final(ctx.trainable, carry, slot.size, slot.weight)
    a = effective_steps(carry.num_steps, momentum)
    delta = jax.tree.map(lambda d: d / jnp.maximum(a, 1e-12).astype(d.dtype), result.delta)
    result = result.replace(delta=delta, extras={WEIGHTED_STEPS: result.weight * a})
    return result, state, {"effective_steps": a}

  def finalize(state, agg: Aggregates):
    tau_eff = agg.extras[WEIGHTED_STEPS] / jnp.maximum(agg.weight_sum, 1e-30)
    delta = jax.tree.map(lambda d: d * tau_eff.astype(d.dtype), agg.delta)
    return delta, state, {"tau_eff": tau_eff}

  return Algorithm(
      name="fednova",
      client=ClientWork(init_state=no_state, update=client_update),
      server=ServerWork(init=no_state, broadcast=lambda state: state, finalize=finalize))


PART = Part("fednova", fednova, "FedNova",
            "normalized averaging of SGD clients (Wang et al., NeurIPS 2020)",
            context=("client_momentum", "client_optimizer"))
