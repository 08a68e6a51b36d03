"""One federated round as one jittable function, composed of parts.

sample cohort -> per chunk of clients (``lax.scan``): gather their persistent
state, run the algorithm's client work vmapped over the chunk (sharded over
``"clients"``), exclude NaN/Inf uploads, preprocess each upload (vmapped,
keyed), then stream the chunk into a streaming aggregator (or stack it for a
whole-cohort one), sum the named extras, scatter the state back -> aggregate
-> the algorithm's server work -> server optax transform (``server_step.py``,
with the trajectory diagnostics of ``trajectory.py``). Shapes depend only
on static settings, so the function is traced once whatever the cohort and
the clients' sizes. No algorithm, aggregator or part metric is named here:
parts report metrics, merged as ``"<part name>/<metric>"``.

References:
  McMahan et al., FedAvg, AISTATS 2017; Reddi et al., "Adaptive Federated
  Optimization", ICLR 2021 (server optimizers on the pseudo-gradient).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fedjax_mm import client as client_lib
from fedjax_mm.aggregation.base import (Aggregator, CohortAggregator, Preprocessor,
                                        check_stack_fits)
from fedjax_mm.aggregation.mean import weighted_mean
from fedjax_mm.algorithms.base import Aggregates, Algorithm, check_task_hooks
from fedjax_mm.algorithms.fedavg import fedavg
from fedjax_mm.data import federated
from fedjax_mm.simulation import mesh as mesh_lib
from fedjax_mm.simulation import population, server_step
# The spec, the key scheme and the round-0 state live beside; re-exported: part of this API.
from fedjax_mm.simulation.cohort import (RoundSpec, aggregator_key, client_key, cohort_ids,
                                         preprocess_key, round_key)
from fedjax_mm.simulation.initial_state import init_population, init_server_state
from fedjax_mm.types import ClientResult, PyTree, ServerState, Task

__all__ = ["DEFAULT_MAX_STACK_BYTES", "RoundSpec", "SAMPLINGS", "aggregator_key", "build_round_fn",
           "client_key", "cohort_ids", "init_population", "init_server_state", "preprocess_key",
           "round_key"]

SAMPLINGS = federated.SAMPLINGS
DEFAULT_MAX_STACK_BYTES = 4 * 2**30


def _prefixed(name: str, metrics) -> dict[str, jax.Array]:
  return {f"{name}/{k}": v for k, v in metrics.items()}


def _all_finite(tree: PyTree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def _exclude_nonfinite(result: ClientResult, new_state: PyTree, old_state: PyTree):
  """Extends ``client_final``'s check to the extras; an excluded client keeps its state."""
  finite = result.is_finite & _all_finite(result.extras)
  zero = lambda tree: jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), tree)
  result = result.replace(
      delta=zero(result.delta), extras=zero(result.extras), is_finite=finite,
      weight=jnp.where(finite, result.weight, 0.0),
      loss_sum=jnp.where(finite, result.loss_sum, 0.0))
  new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, old_state)
  return result, new_state


def build_round_fn(
    task: Task,
    spec: RoundSpec,
    server_tx: optax.GradientTransformation,
    client_optimizer: client_lib.ClientOptimizerFactory,
    client_lr: optax.ScalarOrSchedule,
    *,
    mesh: Mesh | None = None,
    algorithm: Algorithm | None = None,
    aggregator: Aggregator | None = None,
    preprocessors: Sequence[Preprocessor] = (),
    state_rule: population.ClientStateRule | None = None,
    max_stack_bytes: int = DEFAULT_MAX_STACK_BYTES,
) -> Callable[..., tuple[ServerState, population.PopulationState, dict[str, jax.Array]]]:
  """Builds ``round_fn(state, population_state, data, agg_weights, sample_weights, frozen)``.

  Args:
    task: model functions and frozen parameters.
    spec: static round settings.
    server_tx: server optax transform applied to the server work's output.
    client_optimizer: ``lr -> optax transform`` for local training.
    client_lr: client learning rate, a float or a schedule indexed by round.
    mesh: optional mesh; the clients axis of each chunk is sharded over it.
    algorithm: client and server work (default FedAvg).
    aggregator: streaming or whole-cohort (default the streaming weighted mean).
    preprocessors: per-client steps applied to each upload, in order.
    state_rule: per-client bookkeeping (default: participation statistics).
    max_stack_bytes: cap on the stacked cohort of a whole-cohort aggregator.

  Returns:
    A pure function; wrap it in ``jax.jit`` (donating the first two args).
    ``agg_weights`` ``[K]`` are the clients' aggregation weights (example
    counts, ones, or custom); ``sample_weights`` ``[K]`` or None; ``frozen``
    the frozen parameters (default ``task.frozen``; pass them to keep large
    weights out of the compiled program's constants).

  Raises:
    ValueError: a whole-cohort aggregator whose stack exceeds the cap, or a
      task without a hook the algorithm requires.
  """
  algorithm = algorithm or fedavg()
  check_task_hooks(algorithm, task)
  aggregator = aggregator or weighted_mean()
  state_rule = state_rule or population.participation_stats()
  num_devices = mesh.size if mesh is not None else 1
  num_chunks, chunk = spec.chunking(num_devices)
  padded = num_chunks * chunk
  streaming = not isinstance(aggregator, CohortAggregator)
  lr_fn = client_lr if callable(client_lr) else (lambda _: client_lr)
  template = jax.eval_shape(task.init_trainable, jax.random.key(0))
  check_stack_fits(aggregator, template, padded, max_stack_bytes)
  sharded = mesh is not None and mesh.size > 1
  spmd = {"spmd_axis_name": mesh_lib.CLIENTS_AXIS} if sharded else {}

  def round_fn(state: ServerState, population_state: population.PopulationState,
               data: federated.FederatedData, agg_weights: jax.Array,
               sample_weights: jax.Array | None = None, frozen: PyTree | None = None):
    # Frozen weights enter as an argument (not a compile-time constant) and
    # are shared by every client: in_axes=None in effect, never per client.
    frozen = task.frozen if frozen is None else frozen
    stateful = [p.name for p in preprocessors if p.init_state is not None]
    if stateful and not jax.tree.leaves(population_state.preprocess):
      raise ValueError(f"preprocessors {stateful} keep per-client state: build the population "
                       "with init_population(..., preprocessors=<the same chain>)")
    ids = cohort_ids(state, spec, sample_weights)
    valid = jnp.arange(padded) < spec.cohort_size
    ids = jnp.concatenate([ids, jnp.zeros((padded - spec.cohort_size,), jnp.int32)])
    per_client = {
        "id": ids,
        "valid": valid,
        "offset": data.offsets[ids],
        "size": jnp.where(valid, data.sizes[ids], 0),
        "weight": jnp.where(valid, agg_weights[ids], 0.0).astype(jnp.float32),
    }
    lr = jnp.asarray(lr_fn(state.round), jnp.float32)
    ctx = client_lib.LocalContext(
        trainable=state.trainable, broadcast=algorithm.server.broadcast(state.algorithm),
        frozen=frozen, examples=data.examples, schedule=spec.schedule,
        loss_fn=task.per_example_loss, tx=client_optimizer(lr), learning_rate=lr,
        round=state.round, example_mask=task.example_mask, linear_inputs=task.linear_inputs)

    def one_client(c, client_state, stats, pre_states):
      slot = client_lib.ClientSlot(id=c["id"], offset=c["offset"], size=c["size"],
                                   key=client_key(state, c["id"]), weight=c["weight"])
      result, new_state, metrics = algorithm.client.update(ctx, slot, client_state)
      result, new_state = _exclude_nonfinite(result, new_state, client_state)
      metrics = _prefixed(algorithm.name, metrics)
      delta, key = result.delta, preprocess_key(state, c["id"])
      # A population built without preprocessor state (every step stateless).
      pre_states = tuple(pre_states) or ((),) * len(preprocessors)
      new_pre_states = []
      for i, (pre, pre_state) in enumerate(zip(preprocessors, pre_states)):
        if pre.init_state is None:
          delta, pre_metrics = pre.apply(delta, jax.random.fold_in(key, i))
        else:
          delta, pre_state, pre_metrics = pre.apply(delta, jax.random.fold_in(key, i), pre_state)
        new_pre_states.append(pre_state)
        metrics.update(_prefixed(pre.name, pre_metrics))
      counted = c["valid"] & result.is_finite
      # A step's state moves only with an upload that counts (an excluded
      # client's residual must not absorb its NaN delta).
      new_pre_states = jax.tree.map(lambda n, o: jnp.where(counted, n, o),
                                    tuple(new_pre_states), tuple(pre_states))
      mean_loss = result.loss_sum / jnp.maximum(result.num_steps, 1)
      engine = {
          "loss_x_examples": jnp.where(counted, mean_loss * result.num_examples, 0.0),
          "examples": jnp.where(counted, result.num_examples, 0.0),
          "client_steps": result.num_steps,
          "nonfinite": (c["valid"] & ~result.is_finite).astype(jnp.int32),
          "counted": counted.astype(jnp.int32),
          "weight": result.weight,
          "delta_norm": jnp.where(counted, optax.tree.norm(result.delta), 0.0),
          "rows_covered": federated.rows_covered(c["size"], spec.schedule),
          "rows": c["size"],
      }
      only_counted = lambda tree: jax.tree.map(
          lambda x: jnp.where(counted, x, jnp.zeros_like(x)), tree)
      sums = {**engine, **only_counted(metrics), "extras": only_counted(result.extras)}
      return delta, result.weight, counted, sums, new_state, state_rule.update(
          stats, result, state.round), new_pre_states

    def chunk_body(carry, xs):
      acc, sums, pop = carry
      xs = mesh_lib.shard_clients_axis(xs, mesh)
      rows = lambda tree: population.gather(tree, xs["id"])
      deltas, weights, counted, client_sums, new_states, new_stats, new_pre = jax.vmap(
          one_client, **spmd)(xs, rows(pop.client), rows(pop.stats), rows(pop.preprocess))
      deltas = mesh_lib.shard_clients_axis(deltas, mesh)
      pop = population.PopulationState(
          stats=population.scatter(pop.stats, xs["id"], new_stats, xs["valid"]),
          client=population.scatter(pop.client, xs["id"], new_states, xs["valid"]),
          preprocess=population.scatter(pop.preprocess, xs["id"], new_pre, xs["valid"]))
      sums = jax.tree.map(lambda s, c: s + jnp.sum(c, axis=0), sums, client_sums)
      if streaming:
        return (aggregator.accumulate(acc, deltas, weights), sums, pop), None
      return (acc, sums, pop), (deltas, weights, counted & (weights > 0))

    chunked = jax.tree.map(lambda x: x.reshape((num_chunks, chunk) + x.shape[1:]), per_client)
    # The sums' structure (which metrics, which extras) is the parts' business:
    # read it off one client's abstract evaluation.
    one = jax.tree.map(lambda x: x[0], per_client)
    shapes = jax.eval_shape(
        one_client, one, population.gather(population_state.client, one["id"]),
        population.gather(population_state.stats, one["id"]),
        population.gather(population_state.preprocess, one["id"]))[3]
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    acc0 = (aggregator.start(state.aggregator, state.trainable, aggregator_key(state))
            if streaming else ())
    (acc, sums, new_population), stacked = jax.lax.scan(
        chunk_body, (acc0, sums0, population_state), chunked)

    if streaming:
      aggregate, agg_state, agg_metrics = aggregator.finalize(
          state.aggregator, acc, aggregator_key(state))
    else:
      deltas, weights, mask = jax.tree.map(
          lambda x: x.reshape((padded,) + x.shape[2:]), stacked)
      aggregate, agg_state, agg_metrics = aggregator.aggregate(
          state.aggregator, deltas, weights, mask, aggregator_key(state), state.trainable)
    aggregates = Aggregates(delta=aggregate, extras=sums.pop("extras"),
                            weight_sum=sums["weight"], num_counted=sums["counted"],
                            num_clients=spec.num_clients,
                            population_weight=jnp.sum(agg_weights.astype(jnp.float32)))
    new_state, server_metrics, alg_metrics = server_step.server_step(
        state, aggregates, agg_state, algorithm=algorithm, server_tx=server_tx)
    num_counted = jnp.maximum(sums["counted"], 1)
    part_means = {k: v / num_counted for k, v in sums.items() if "/" in k}
    metrics = {
        "train_loss": sums["loss_x_examples"] / jnp.maximum(sums["examples"], 1.0),
        "client_steps": sums["client_steps"],
        "num_nonfinite_clients": sums["nonfinite"],
        "num_counted_clients": sums["counted"],
        "mean_client_delta_norm": sums["delta_norm"] / num_counted,
        "rows_used_fraction": sums["rows_covered"] / jnp.maximum(sums["rows"], 1),
        "client_lr": lr,
        **server_metrics,
        **part_means,
        **_prefixed(aggregator.name, agg_metrics),
        **_prefixed(algorithm.name, alg_metrics),
    }
    return new_state, new_population, metrics

  return round_fn
