"""One federated round as one jittable function.

sample cohort -> gather client rows and state -> vmap local training over a
chunk of clients (sharded over ``"clients"``) -> stream the chunk into the
aggregator -> next chunk (``lax.scan``) -> server optax transform -> scatter
client state back. Shapes depend only on static settings, so the function is
traced once whatever the cohort and the clients' sizes.

References:
  McMahan et al., FedAvg, AISTATS 2017; Reddi et al., "Adaptive Federated
  Optimization", ICLR 2021 (server optimizers on the pseudo-gradient).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fedjax_mm import client as client_lib
from fedjax_mm.aggregation.mean import Aggregator, weighted_mean
from fedjax_mm.data import federated
from fedjax_mm.simulation import mesh as mesh_lib
from fedjax_mm.simulation import population
from fedjax_mm.types import PyTree, ServerState, Task

SAMPLINGS = ("uniform", "size")


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
    sampling: ``"uniform"`` or ``"size"`` (probability proportional to the
      ``sample_weights`` passed to the round, e.g. client sizes).
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
  """The round's cohort, a pure function of ``(state.rng, state.round)``."""
  key = jax.random.fold_in(round_key(state), 0)
  weights = sample_weights if spec.sampling == "size" else None
  return federated.sample_cohort(key, spec.num_clients, spec.cohort_size, weights)


def client_key(state: ServerState, client_id: jax.Array) -> jax.Array:
  """A client's key for the round: depends on its id, not its cohort slot."""
  return jax.random.fold_in(jax.random.fold_in(round_key(state), 1), client_id)


def build_round_fn(
    task: Task,
    spec: RoundSpec,
    server_tx: optax.GradientTransformation,
    client_optimizer: client_lib.ClientOptimizerFactory,
    client_lr: optax.ScalarOrSchedule,
    *,
    mesh: Mesh | None = None,
    aggregator: Aggregator | None = None,
    state_rule: population.ClientStateRule | None = None,
) -> Callable[..., tuple[ServerState, PyTree, dict[str, jax.Array]]]:
  """Builds ``round_fn(state, population_state, data, agg_weights, sample_weights)``.

  Args:
    task: model functions and frozen parameters.
    spec: static round settings.
    server_tx: server optax transform applied to the aggregated delta.
    client_optimizer: ``lr -> optax transform`` for local training.
    client_lr: client learning rate, a float or a schedule indexed by round.
    mesh: optional mesh; the clients axis of each chunk is sharded over it.
    aggregator: defaults to the streaming weighted mean.
    state_rule: per-client persistent state rule (default: participation
      statistics).

  Returns:
    A pure function; wrap it in ``jax.jit`` (donating the first two args).
    ``agg_weights`` ``[K]`` are the clients' aggregation weights (example
    counts, ones, or custom); ``sample_weights`` ``[K]`` or None; ``frozen``
    the frozen parameters (default ``task.frozen``; pass them to keep large
    weights out of the compiled program's constants).
  """
  aggregator = aggregator or weighted_mean()
  state_rule = state_rule or population.participation_stats()
  num_devices = mesh.size if mesh is not None else 1
  num_chunks, chunk = spec.chunking(num_devices)
  padded = num_chunks * chunk
  lr_fn = client_lr if callable(client_lr) else (lambda _: client_lr)

  def round_fn(state: ServerState, population_state: PyTree,
               data: federated.FederatedData, agg_weights: jax.Array,
               sample_weights: jax.Array | None = None, frozen: PyTree | None = None):
    # Frozen weights enter as an argument (not a compile-time constant) and
    # are shared by every client: in_axes=None in effect, never per client.
    frozen = task.frozen if frozen is None else frozen
    ids = cohort_ids(state, spec, sample_weights)
    pad = padded - spec.cohort_size
    valid = jnp.arange(padded) < spec.cohort_size
    ids = jnp.concatenate([ids, jnp.zeros((pad,), jnp.int32)])
    per_client = {
        "id": ids,
        "valid": valid,
        "offset": data.offsets[ids],
        "size": jnp.where(valid, data.sizes[ids], 0),
        "weight": jnp.where(valid, agg_weights[ids], 0.0).astype(jnp.float32),
        "state": population.gather(population_state, ids),
    }
    tx = client_optimizer(lr_fn(state.round))

    def one_client(c):
      result = client_lib.local_update(
          state.trainable, frozen, data.examples, c["offset"], c["size"],
          client_key(state, c["id"]), c["weight"], schedule=spec.schedule,
          loss_fn=task.per_example_loss, tx=tx,
          example_mask=task.example_mask)
      return result, state_rule.update(c["state"], result, state.round)

    def chunk_body(carry, xs):
      acc, sums = carry
      xs = mesh_lib.shard_clients_axis(xs, mesh)
      results, new_states = jax.vmap(one_client)(xs)
      results = mesh_lib.shard_clients_axis(results, mesh)
      acc = aggregator.accumulate(acc, results.delta, results.weight)
      mean_loss = results.loss_sum / jnp.maximum(results.num_steps, 1)
      counted = xs["valid"] & results.is_finite
      sums = {
          "loss_x_examples": sums["loss_x_examples"] + jnp.sum(
              jnp.where(counted, mean_loss * results.num_examples, 0.0)),
          "examples": sums["examples"] + jnp.sum(jnp.where(counted, results.num_examples, 0.0)),
          "client_steps": sums["client_steps"] + jnp.sum(results.num_steps),
          "nonfinite": sums["nonfinite"] + jnp.sum(xs["valid"] & ~results.is_finite),
          "delta_norm": sums["delta_norm"] + jnp.sum(jnp.where(
              counted, jax.vmap(optax.tree.norm)(results.delta), 0.0)),
      }
      return (acc, sums), new_states

    chunked = jax.tree.map(lambda x: x.reshape((num_chunks, chunk) + x.shape[1:]), per_client)
    zero = lambda dtype: jnp.zeros((), dtype)
    sums0 = {"loss_x_examples": zero(jnp.float32), "examples": zero(jnp.float32),
             "client_steps": zero(jnp.int32), "nonfinite": zero(jnp.int32),
             "delta_norm": zero(jnp.float32)}
    (acc, sums), new_states = jax.lax.scan(
        chunk_body, (aggregator.init(state.trainable), sums0), chunked)
    new_states = jax.tree.map(lambda x: x.reshape((padded,) + x.shape[2:]), new_states)

    aggregate, total_weight = aggregator.finalize(acc)
    updates, opt_state = server_tx.update(aggregate, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    # No usable update this round (all excluded): keep the server as it was.
    has_update = total_weight > 0
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(has_update, n, o), new, old)
    new_state = state.replace(
        round=state.round + 1,
        trainable=keep(trainable, state.trainable),
        opt_state=keep(opt_state, state.opt_state))
    num_finite = jnp.maximum(spec.cohort_size - sums["nonfinite"], 1)
    metrics = {
        "train_loss": sums["loss_x_examples"] / jnp.maximum(sums["examples"], 1.0),
        "client_steps": sums["client_steps"],
        "num_nonfinite_clients": sums["nonfinite"],
        "update_norm": optax.tree.norm(aggregate),
        "mean_client_delta_norm": sums["delta_norm"] / num_finite,
        "client_lr": jnp.asarray(lr_fn(state.round), jnp.float32),
    }
    return new_state, population.scatter(population_state, ids, new_states, valid), metrics

  return round_fn


def init_server_state(task: Task, server_tx: optax.GradientTransformation,
                      seed: int) -> ServerState:
  """Round-0 server state; parameters are drawn from a key no round uses."""
  root = jax.random.key(seed)
  trainable = task.init_trainable(jax.random.fold_in(root, 2**31 - 1))
  return ServerState(round=jnp.zeros((), jnp.int32), trainable=trainable,
                     opt_state=server_tx.init(trainable), rng=root)
