"""Round-0 state of a run: the server's and the population's, from the parts.

The parameters come from ``initial_trainable(task, seed)`` (a key no round
uses), the optimizer, algorithm and aggregator state from their ``init``,
and each client's state (the algorithm's, the stateful preprocessors') is
broadcast over the population.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from fedjax_mm.aggregation.base import Aggregator, Preprocessor
from fedjax_mm.aggregation.mean import weighted_mean
from fedjax_mm.algorithms.base import Algorithm
from fedjax_mm.algorithms.fedavg import fedavg
from fedjax_mm.simulation import population
from fedjax_mm.types import ServerState, Task, initial_trainable


def init_server_state(task: Task, server_tx: optax.GradientTransformation, seed: int, *,
                      algorithm: Algorithm | None = None,
                      aggregator: Aggregator | None = None) -> ServerState:
  """Round-0 server state; parameters are drawn from a key no round uses."""
  algorithm = algorithm or fedavg()
  aggregator = aggregator or weighted_mean()
  root = jax.random.key(seed)
  trainable = initial_trainable(task, seed)
  return ServerState(round=jnp.zeros((), jnp.int32), trainable=trainable,
                     opt_state=server_tx.init(trainable), rng=root,
                     algorithm=algorithm.server.init(trainable),
                     aggregator=aggregator.init(trainable),
                     last_update=optax.tree.zeros_like(trainable),
                     last_pseudo_gradient=optax.tree.zeros_like(trainable),
                     path_length=jnp.zeros((), jnp.float32))


def init_population(task: Task, num_clients: int, *, algorithm: Algorithm | None = None,
                    state_rule: population.ClientStateRule | None = None,
                    preprocessors: Sequence[Preprocessor] = ()
                    ) -> population.PopulationState:
  """Round-0 population state: bookkeeping, the algorithm's and the preprocessors' client state."""
  algorithm = algorithm or fedavg()
  state_rule = state_rule or population.participation_stats()
  template = jax.eval_shape(task.init_trainable, jax.random.key(0))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
  pre_state = tuple(() if pre.init_state is None else pre.init_state(zeros)
                    for pre in preprocessors)
  if not jax.tree.leaves(pre_state):   # a stateless chain keeps no entry (as before it existed)
    pre_state = ()
  return population.init_population(state_rule, num_clients, algorithm.client.init_state(zeros),
                                    pre_state)
