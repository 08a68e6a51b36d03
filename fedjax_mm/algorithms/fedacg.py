"""FedACG: clients start from the server's momentum lookahead, regularized towards it.

The server keeps a momentum ``m`` (zero at first). In round t it broadcasts
the lookahead ``w̃_t = w_{t−1} + λ m_{t−1}``; client i starts there and takes
local steps on ``f_i(θ) + (β/2) ‖θ − w̃_t‖²`` to ``θ_i``; then, with
``Δ_i = θ_i − w̃_t`` and the mean over the cohort,

    m_t = λ m_{t−1} + mean_i Δ_i,        w_t = w̃_t + mean_i Δ_i = w_{t−1} + m_t.

In our sign convention (``delta = start − local``, a pseudo-gradient) the
server keeps ``v = −m`` and broadcasts ``λ v``; a client starts from
``w − λ v`` and uploads ``d_i = (w − λ v) − θ_i = −Δ_i``, its change from the
point it was sent, so preprocessors (clipping, compression) act on what the
client actually computed. The server's pseudo-gradient is

    v_t = λ v_{t−1} + Σ_i p_i d_i,

and ``server.kind=fedavg`` at learning rate 1 (``w ← w − v_t``) is the
paper's update exactly; ``p_i`` are the aggregation weights
(``aggregation.weighting=uniform`` gives the paper's plain mean). Another
server optimizer is applied to ``v_t`` as to any pseudo-gradient (FedAvgM
on top would be a second momentum). ``v`` is the algorithm's server state
(a pytree like the trainable parameters, checkpointed with the run). The
local objective is FedProx's with ``μ = β`` around the lookahead, so the
client work is FedProx's started from ``w̃_t``. ``λ = β = 0`` is FedAvg.

Defaults: ``λ = 0.85`` (the paper and the authors' code) and ``β = 0.001``.
The authors' code weighs ``‖θ − w̃‖²`` by 1e-3 without the 1/2, which is
``β = 0.002`` in the ``β/2`` form above: set ``beta`` accordingly to match it.
Aggregators that receive the global parameters (``aggregate(..., global
params)``) are given ``w``, not the lookahead the deltas are relative to.

References:
  Kim, Kim, Han, "Communication-Efficient Federated Learning with
  Accelerated Client Gradient", CVPR 2024; arXiv:2201.03172 (Algorithm 1).
"""

from __future__ import annotations

import jax
import optax

from fedjax_mm import checks
from fedjax_mm import client as client_lib
from fedjax_mm.algorithms.base import Aggregates, Algorithm, ClientWork, ServerWork, no_state
from fedjax_mm.algorithms.fedprox import fedprox
from fedjax_mm.registry import Part


def fedacg(momentum: float = 0.85, beta: float = 0.001) -> Algorithm:
  """FedACG with server momentum ``λ`` and lookahead regularization ``β``.

  Args:
    momentum: λ in [0, 1): weight of the momentum in the lookahead and its decay.
    beta: β >= 0 (finite): strength of the pull towards the lookahead.

  Example:
    >>> algorithm = fedacg(momentum=0.85, beta=0.001)   # with server.kind=fedavg, lr 1
  """
  checks.number("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")
  checks.number("beta", beta, lambda v: v >= 0, ">= 0")
  proximal = fedprox(mu=beta).client

  def client_update(ctx: client_lib.LocalContext, slot: client_lib.ClientSlot, state):
    # ctx.broadcast = λ v: the lookahead w̃ = w + λ m = w − λ v. The client's
    # "global" is the point it was sent, so its delta is w̃ − θ_i.
    lookahead = jax.tree.map(lambda w, lv: w - lv, ctx.trainable, ctx.broadcast)
    return proximal.update(ctx._replace(trainable=lookahead), slot, state)

  def server_init(trainable):
    return optax.tree.zeros_like(trainable)

  def broadcast(v):
    return jax.tree.map(lambda x: momentum * x, v)

  def finalize(v, agg: Aggregates):
    new_v = jax.tree.map(lambda m, d: momentum * m + d, v, agg.delta)
    return new_v, new_v, {"momentum_norm": optax.tree.norm(new_v)}

  return Algorithm(
      name="fedacg",
      client=ClientWork(init_state=no_state, update=client_update),
      server=ServerWork(init=server_init, broadcast=broadcast, finalize=finalize))


PART = Part("fedacg", fedacg, "FedACG",
            "clients start from the server-momentum lookahead, proximal to it "
            "(Kim et al., CVPR 2024)")
