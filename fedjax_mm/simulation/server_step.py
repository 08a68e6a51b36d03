"""The server's half of a round: pseudo-gradient -> server transform -> new state.

After the cohort is aggregated, the algorithm's server work turns the
:class:`Aggregates` into the pseudo-gradient ``g_t`` (FedAvg: the weighted
mean delta), the server optax transform turns ``g_t`` into the update
``u_t`` and ``W_t = W_{t-1} + u_t`` (``optax.apply_updates``). A round with
no usable upload (every client excluded or weightless) keeps the server as it
was. The trajectory diagnostics (``trajectory.py``) are taken here, between
the transform's input and its output.

References:
  McMahan et al., FedAvg, AISTATS 2017; Reddi et al., "Adaptive Federated
  Optimization", ICLR 2021 (server optimizers on the pseudo-gradient).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from fedjax_mm.algorithms.base import Aggregates, Algorithm
from fedjax_mm.simulation import trajectory
from fedjax_mm.types import PyTree, ServerState


def server_step(state: ServerState, aggregates: Aggregates, aggregator_state: PyTree, *,
                algorithm: Algorithm, server_tx: optax.GradientTransformation
                ) -> tuple[ServerState, dict[str, jax.Array], Mapping[str, jax.Array]]:
  """Applies one round's aggregates to the server state.

  Args:
    state: the server state the round started from.
    aggregates: the cohort's aggregate, extras and weight sums.
    aggregator_state: the aggregator's state after this round (handed to
      server transforms that take extra arguments, e.g. OPM reads CRA's
      basis there).
    algorithm: its server work turns the aggregates into the pseudo-gradient.
    server_tx: the server optax transform.

  Returns:
    ``(new_state, metrics, algorithm_metrics)``: the next round's state
    (``round`` + 1), the trajectory metrics (``trajectory.round_diagnostics``)
    and the algorithm's own server metrics (unprefixed).
  """
  pseudo_gradient, alg_state, alg_metrics = algorithm.server.finalize(
      state.algorithm, aggregates)
  # Transforms that take extra arguments (optax.chain always does) get the
  # aggregator's new state: Fed-CMP's momentum reads the round's basis there.
  extra = ({"aggregator_state": aggregator_state}
           if isinstance(server_tx, optax.GradientTransformationExtraArgs) else {})
  updates, opt_state = server_tx.update(pseudo_gradient, state.opt_state, state.trainable,
                                        **extra)
  # No usable update this round (all excluded or weightless): keep the
  # server as it was. The driver stops a run whose clients all failed.
  has_update = (aggregates.num_counted > 0) & (aggregates.weight_sum > 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(has_update, n, o), new, old)
  fields, metrics = trajectory.round_diagnostics(state, pseudo_gradient, updates, has_update)
  new_state = state.replace(
      round=state.round + 1,
      trainable=keep(optax.apply_updates(state.trainable, updates), state.trainable),
      opt_state=keep(opt_state, state.opt_state),
      algorithm=keep(alg_state, state.algorithm),
      aggregator=keep(aggregator_state, state.aggregator),
      **fields)
  return new_state, metrics, alg_metrics
