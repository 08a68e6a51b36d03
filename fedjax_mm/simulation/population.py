"""Per-client persistent state for a whole population, stored as ``[K, ...]``.

State that must survive between a client's participations (SCAFFOLD control
variates, error-feedback residuals, personal parameters, participation
statistics) lives in one pytree whose leaves have a leading population axis K.
The round gathers a chunk's rows and scatters the updated rows back inside
its chunk loop, so model-sized state costs O(chunk) working memory on top of
the O(K) store; no per-client Python object exists.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_mm.types import ClientResult, PyTree


class ClientStateRule(NamedTuple):
  """How one client's persistent state is created and updated.

  Attributes:
    init: ``() -> one client's state`` (leaves without the K axis).
    update: ``(client_state, result, round) -> new client_state``, run inside
      the vmapped client computation after local training.
  """

  init: Callable[[], PyTree]
  update: Callable[[PyTree, ClientResult, jax.Array], PyTree]


@struct.dataclass
class PopulationState:
  """The whole population's persistent state, every leaf ``[K, ...]``.

  Attributes:
    stats: bookkeeping kept by the :class:`ClientStateRule` (participation).
    client: the algorithm's per-client state (e.g. SCAFFOLD's control
      variates); ``()`` when it keeps none.
    preprocess: one entry per preprocessor of the chain: its per-client state
      (e.g. error-feedback residuals), ``()`` for a stateless step.
  """

  stats: PyTree
  client: PyTree = ()
  preprocess: PyTree = ()


def broadcast_population(one_client: PyTree, num_clients: int) -> PyTree:
  """Broadcasts one client's state to ``[K, ...]``."""
  return jax.tree.map(
      lambda x: jnp.broadcast_to(x, (num_clients,) + jnp.shape(x)).copy(), one_client)


def init_population(rule: ClientStateRule, num_clients: int,
                    client_state: PyTree = (), preprocess_state: PyTree = ()) -> PopulationState:
  """Round-0 population: bookkeeping, ``client_state`` and ``preprocess_state`` for every client."""
  return PopulationState(stats=broadcast_population(rule.init(), num_clients),
                         client=broadcast_population(client_state, num_clients),
                         preprocess=broadcast_population(preprocess_state, num_clients))


def gather(population_state: PyTree, ids: jax.Array) -> PyTree:
  """Rows ``ids`` of every leaf: ``[C, ...]``."""
  return jax.tree.map(lambda x: x[ids], population_state)


def scatter(population_state: PyTree, ids: jax.Array, rows: PyTree,
            valid: jax.Array) -> PyTree:
  """Writes ``rows`` back at ``ids``; rows with ``valid == False`` are dropped.

  Cohort ids are distinct, so the write is a well-defined permutation.
  """
  leaves = jax.tree.leaves(population_state)
  if not leaves:
    return population_state
  target = jnp.where(valid, ids, leaves[0].shape[0])  # out of range -> dropped
  return jax.tree.map(lambda x, r: x.at[target].set(r, mode="drop"),
                      population_state, rows)


@struct.dataclass
class ParticipationStats:
  """Per-client bookkeeping kept by default for every run.

  Attributes:
    participations: rounds the client was sampled in.
    last_round: last round it took part in (-1 if never).
    last_loss: its mean local training loss then (NaN if never).
    nonfinite_updates: updates of this client excluded for NaN/Inf.
  """

  participations: jax.Array
  last_round: jax.Array
  last_loss: jax.Array
  nonfinite_updates: jax.Array


def participation_stats() -> ClientStateRule:
  """The default :class:`ClientStateRule`: participation bookkeeping."""

  def init() -> ParticipationStats:
    return ParticipationStats(
        participations=jnp.zeros((), jnp.int32), last_round=jnp.full((), -1, jnp.int32),
        last_loss=jnp.full((), jnp.nan, jnp.float32),
        nonfinite_updates=jnp.zeros((), jnp.int32))

  def update(state: ParticipationStats, result: ClientResult, round_: jax.Array):
    mean_loss = result.loss_sum / jnp.maximum(result.num_steps, 1).astype(jnp.float32)
    return ParticipationStats(
        participations=state.participations + 1,
        last_round=round_.astype(jnp.int32),
        last_loss=jnp.where(result.is_finite, mean_loss, jnp.nan).astype(jnp.float32),
        nonfinite_updates=state.nonfinite_updates + (~result.is_finite).astype(jnp.int32))

  return ClientStateRule(init, update)
