"""A sequential reference round: a Python loop of one jitted client update per client.

This is how simple simulators run a round. It exists to check the vmapped,
chunked, sharded round against (tests) and to measure it against (the engine
benchmark). It shares the client update, cohort sampling and per-client keys
with the real round, and nothing of its batching, chunking, sharding or
aggregation: the weighted mean is taken in float64 NumPy on the host.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_mm import client as client_lib
from fedjax_mm.data import federated
from fedjax_mm.simulation import population
from fedjax_mm.simulation import round as round_lib
from fedjax_mm.types import PyTree, ServerState, Task


def build_sequential_round(
    task: Task,
    spec: round_lib.RoundSpec,
    server_tx: optax.GradientTransformation,
    client_optimizer: client_lib.ClientOptimizerFactory,
    client_lr: optax.ScalarOrSchedule,
    *,
    state_rule: population.ClientStateRule | None = None,
) -> Callable[..., tuple[ServerState, PyTree, dict[str, float]]]:
  """Builds ``round(state, population_state, data, agg_weights, sample_weights)``.

  Same signature and results as :func:`round_lib.build_round_fn`'s function
  (metrics: ``train_loss`` and ``client_steps`` only), computed client by client.
  """
  state_rule = state_rule or population.participation_stats()
  lr_fn = client_lr if callable(client_lr) else (lambda _: client_lr)

  @jax.jit
  def one_client(trainable, examples, offset, size, key, weight, lr, client_state, round_):
    result = client_lib.local_update(
        trainable, task.frozen, examples, offset, size, key, weight,
        schedule=spec.schedule, loss_fn=task.per_example_loss, tx=client_optimizer(lr))
    return result, state_rule.update(client_state, result, round_)

  @jax.jit
  def server_update(state: ServerState, aggregate: PyTree) -> ServerState:
    updates, opt_state = server_tx.update(aggregate, state.opt_state, state.trainable)
    return state.replace(round=state.round + 1, opt_state=opt_state,
                         trainable=optax.apply_updates(state.trainable, updates))

  def round_fn(state: ServerState, population_state: PyTree,
               data: federated.FederatedData, agg_weights: jax.Array,
               sample_weights: jax.Array | None = None):
    ids = np.asarray(round_lib.cohort_ids(state, spec, sample_weights))
    lr = jnp.asarray(lr_fn(state.round), jnp.float32)
    results, new_states = [], []
    for cid in ids:
      result, new_state = one_client(
          state.trainable, data.examples, data.offsets[cid], data.sizes[cid],
          round_lib.client_key(state, cid), agg_weights[cid], lr,
          population.gather(population_state, cid), state.round)
      results.append(result)
      new_states.append(new_state)
    results = jax.device_get(results)
    weights = np.array([r.weight for r in results], np.float64)
    total = weights.sum()
    aggregate = jax.tree.map(
        lambda *ds: (np.tensordot(weights, np.stack(ds).astype(np.float64), axes=1)
                     / total if total > 0 else np.zeros_like(ds[0])).astype(ds[0].dtype),
        *[r.delta for r in results])
    new_server = server_update(state, aggregate) if total > 0 else state.replace(
        round=state.round + 1)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *new_states)
    population_state = population.scatter(
        population_state, jnp.asarray(ids), stacked, jnp.ones(len(ids), bool))
    finite = [r for r in results if r.is_finite]
    examples = sum(float(r.num_examples) for r in finite)
    metrics = {
        "train_loss": sum(float(r.loss_sum) / max(int(r.num_steps), 1) * float(r.num_examples)
                          for r in finite) / max(examples, 1.0),
        "client_steps": int(sum(int(r.num_steps) for r in results)),
    }
    return new_server, population_state, metrics

  return round_fn

