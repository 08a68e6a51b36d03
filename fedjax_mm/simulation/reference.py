"""A sequential reference round: a Python loop of one jitted client update per client.

This is how simple simulators run a round (FedAvg client work, weighted mean). It exists to check the vmapped,
chunked, sharded round against (tests) and to measure it against (the engine
benchmark). It shares the client update, cohort sampling and per-client keys
with the real round, and nothing of its batching, chunking, sharding or
streaming aggregation: deltas are summed one client at a time.
"""

from __future__ import annotations

import functools
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
  (metrics: ``train_loss`` and ``client_steps`` only), computed client by
  client. The loop is kept lean, as a fair baseline: the cohort's inputs are
  computed in one call before it, each client is one jitted call that also
  adds its weighted delta to a device accumulator, and nothing is read back
  until the loop ends (dispatch runs ahead of execution).
  """
  state_rule = state_rule or population.participation_stats()
  lr_fn = client_lr if callable(client_lr) else (lambda _: client_lr)

  @jax.jit
  def cohort_inputs(state, population_state, data, agg_weights, sample_weights):
    ids = round_lib.cohort_ids(state, spec, sample_weights)
    keys = jax.vmap(lambda i: jax.random.key_data(round_lib.client_key(state, i)))(ids)
    return (ids, keys, data.offsets[ids], data.sizes[ids], agg_weights[ids],
            population.gather(population_state.stats, ids))

  @functools.partial(jax.jit, donate_argnums=0)
  def one_client(acc, trainable, examples, offset, size, key_data, weight, lr,
                 client_state, round_):
    result = client_lib.local_update(
        trainable, task.frozen, examples, offset, size, jax.random.wrap_key_data(key_data),
        weight, schedule=spec.schedule, loss_fn=task.per_example_loss, tx=client_optimizer(lr),
        example_mask=task.example_mask)
    weighted_sum, weight_sum = acc
    weighted_sum = jax.tree.map(lambda a, d: a + result.weight * d, weighted_sum, result.delta)
    scalars = (result.loss_sum, result.num_steps, result.num_examples, result.is_finite)
    return ((weighted_sum, weight_sum + result.weight), scalars,
            state_rule.update(client_state, result, round_))

  @jax.jit
  def server_update(state: ServerState, acc) -> tuple[ServerState, jax.Array]:
    weighted_sum, weight_sum = acc
    mean = jax.tree.map(lambda s: s / jnp.maximum(weight_sum, 1e-30), weighted_sum)
    updates, opt_state = server_tx.update(mean, state.opt_state, state.trainable)
    new = state.replace(round=state.round + 1, opt_state=opt_state,
                        trainable=optax.apply_updates(state.trainable, updates))
    # Nothing usable this round: the server stays as it was.
    keep = weight_sum > 0
    return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new,
                        state.replace(round=state.round + 1)), weight_sum

  def round_fn(state: ServerState, population_state: PyTree,
               data: federated.FederatedData, agg_weights: jax.Array,
               sample_weights: jax.Array | None = None):
    ids, keys, offsets, sizes, weights, client_states = jax.device_get(cohort_inputs(
        state, population_state, data, agg_weights, sample_weights))
    lr = jnp.asarray(lr_fn(state.round), jnp.float32)
    acc = (optax.tree.zeros_like(state.trainable), jnp.zeros((), jnp.float32))
    scalars, new_states = [], []
    for i in range(len(ids)):
      acc, client_scalars, new_state = one_client(
          acc, state.trainable, data.examples, offsets[i], sizes[i], keys[i], weights[i],
          lr, jax.tree.map(lambda x: x[i], client_states), state.round)
      scalars.append(client_scalars)
      new_states.append(new_state)
    new_server, _ = server_update(state, acc)
    loss_sum, num_steps, num_examples, finite = map(np.asarray, zip(*jax.device_get(scalars)))
    # Stack on the host: jnp.stack of C operands compiles a C-way concat.
    stacked = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *jax.device_get(new_states))
    population_state = population_state.replace(stats=population.scatter(
        population_state.stats, jnp.asarray(ids), stacked, jnp.ones(len(ids), bool)))
    counted = finite.astype(np.float64) * num_examples
    mean_loss = loss_sum / np.maximum(num_steps, 1)
    metrics = {"train_loss": float(np.sum(mean_loss * counted) / max(np.sum(counted), 1.0)),
               "client_steps": int(np.sum(num_steps))}
    return new_server, population_state, metrics

  return round_fn
