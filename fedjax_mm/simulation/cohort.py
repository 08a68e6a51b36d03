"""A round's static settings, the cohort it draws and its key scheme.

Every random choice of a round comes from the root key and the round index
by ``fold_in``, never from the chunking or the mesh: the round key
``fold_in(rng, round)``; then the cohort ``0``, client data ``1`` (by client
id), preprocessing ``2`` (by client id) and the aggregator ``3``. The
one-pass order comes from the root key itself (one order for the run).
"""

from __future__ import annotations

import dataclasses

import jax

from fedjax_mm.data import federated
from fedjax_mm.types import ServerState


@dataclasses.dataclass(frozen=True)
class RoundSpec:
  """Static settings of a round (changing one means a new compilation).

  Attributes:
    num_clients: K, the population size.
    cohort_size: C, clients per round.
    chunk_size: clients trained at once (vmapped); the cohort is padded to a
      multiple of it with weight-0 clients. Must be a multiple of the mesh
      size. ``0`` means the whole (padded) cohort in one chunk.
    schedule: the local data schedule (steps or epochs, S, B).
    sampling: ``"uniform"``, ``"size"`` (probability proportional to the
      ``sample_weights`` passed to the round, e.g. client sizes) or
      ``"one_pass"`` (round t takes positions [tC, (t+1)C) of a keyed
      permutation of the clients: nobody is drawn twice in K / C rounds).
  """

  num_clients: int
  cohort_size: int
  chunk_size: int
  schedule: federated.LocalSchedule
  sampling: str = "uniform"

  def chunking(self, num_devices: int = 1) -> tuple[int, int]:
    """``(num_chunks, chunk)`` with chunk a multiple of ``num_devices``."""
    # Never pad a small cohort up to a large chunk.
    chunk = min(self.chunk_size or self.cohort_size, self.cohort_size)
    chunk = -(-chunk // num_devices) * num_devices
    return -(-self.cohort_size // chunk), chunk


def round_key(state: ServerState) -> jax.Array:
  return jax.random.fold_in(state.rng, state.round)


def cohort_ids(state: ServerState, spec: RoundSpec,
               sample_weights: jax.Array | None) -> jax.Array:
  """The round's cohort, a pure function of ``(state.rng, state.round)``.

  ``"uniform"`` / ``"size"`` draw afresh each round from the round key.
  ``"one_pass"`` takes positions ``[t*C, (t+1)*C)`` of one client order
  drawn from the root key, so no client is drawn twice in ``K // C`` rounds.
  """
  if spec.sampling == "one_pass":
    # One order for the whole run, so it must not come from a round key.
    # 2**31 - 2 is reserved beside the parameters' 2**31 - 1: no round index
    # reaches it, so no round key equals this one.
    order_key = jax.random.fold_in(state.rng, 2**31 - 2)
    return federated.one_pass_cohort(order_key, spec.num_clients, spec.cohort_size,
                                     state.round)
  key = jax.random.fold_in(round_key(state), 0)
  weights = sample_weights if spec.sampling == "size" else None
  return federated.sample_cohort(key, spec.num_clients, spec.cohort_size, weights)


def client_key(state: ServerState, client_id: jax.Array) -> jax.Array:
  """A client's key for the round: depends on its id, not its cohort slot."""
  return jax.random.fold_in(jax.random.fold_in(round_key(state), 1), client_id)


def preprocess_key(state: ServerState, client_id: jax.Array) -> jax.Array:
  """A client's key for its upload's preprocessing (independent of its data key)."""
  return jax.random.fold_in(jax.random.fold_in(round_key(state), 2), client_id)


def aggregator_key(state: ServerState) -> jax.Array:
  return jax.random.fold_in(round_key(state), 3)
