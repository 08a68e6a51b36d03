"""Shared test fixtures: one tiny task, one tiny population and one round harness.

Every round-level test builds its round through :class:`Harness` (parts in,
a jitted round and its initial state out) instead of wiring
``build_round_fn`` / ``init_server_state`` / ``init_population`` itself, so
that a change of the round's signature is made in one place. The default
task is multinomial logistic regression 60 -> 10 (610 parameters) on a
Synthetic(1, 1) population of 24 clients with 3-40 rows each: rounds compile
in about a second and run in milliseconds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_mm import client as client_lib
from fedjax_mm.data import federated, synthetic
from fedjax_mm.models import logreg
from fedjax_mm.simulation import round as round_lib
from fedjax_mm.types import Task

K = 24
COHORT = 7
TASK = logreg.task(60, 10)
# Compile fast (the rounds are tiny): XLA's backend optimizations and its CPU
# fusion emitters cost more compile time than they save here (a contract
# case's round: 2.2 s -> 0.9 s to compile, the same run time), and the checks
# are about semantics, which neither changes.
FAST = {"compiler_options": {"xla_backend_optimization_level": 0,
                                "xla_cpu_use_fusion_emitters": False}}
EPOCHS = federated.LocalSchedule("epochs", 6, 4, 1)


def tiny_population(num_clients: int = K, seed: int = 0, num_features: int = 60,
                    num_classes: int = 10, max_size: int = 40) -> federated.FederatedData:
  """The clients' training rows: Synthetic(1, 1), 90% of each client's rows."""
  data = synthetic.generate(seed, num_clients, num_features=num_features,
                            num_classes=num_classes, size_mean=2.0, size_sigma=1.0,
                            min_size=3, max_size=max_size)
  return jax.device_put(federated.split_by_position(data, 0.9)[0])


@pytest.fixture(scope="session")
def train() -> federated.FederatedData:
  return tiny_population()


def bits(tree: Any) -> list[np.ndarray]:
  """Every leaf as a NumPy array (PRNG keys as their key data), for bit-exact checks."""
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x) for x in jax.tree.leaves(tree)]


@dataclasses.dataclass
class Harness:
  """A jitted round with its initial server and population state.

  Attributes:
    fn: ``(state, pop, data, weights, sample_weights) -> (state, pop, metrics)``.
    state: the initial server state.
    pop: the initial population state.
  """

  fn: Any
  state: Any
  pop: Any

  def run(self, data: federated.FederatedData, rounds: int, state=None, pop=None,
          weights: jax.Array | None = None) -> tuple[Any, Any, list[dict]]:
    """``rounds`` rounds from ``state``/``pop`` (default the initial ones)."""
    state = self.state if state is None else state
    pop = self.pop if pop is None else pop
    weights = data.sizes.astype(jnp.float32) if weights is None else weights
    history = []
    for _ in range(rounds):
      state, pop, metrics = self.fn(state, pop, data, weights, None)
      history.append(metrics)
    return state, pop, history


def build(*, task: Task = TASK, num_clients: int = K, cohort: int = COHORT, chunk: int = 0,
          schedule: federated.LocalSchedule = EPOCHS, algorithm=None, aggregator=None,
          preprocessors: Sequence = (), tx: optax.GradientTransformation = optax.sgd(1.0),
          client_optimizer: str = "sgd", client_lr: Any = 0.1, seed: int = 2,
          jit: bool = True, compile_fast: bool = True, **round_kwargs) -> Harness:
  """Builds a round from parts (defaults: FedAvg, streaming mean, SGD clients)."""
  spec = round_lib.RoundSpec(num_clients=num_clients, cohort_size=cohort, chunk_size=chunk,
                             schedule=schedule, **{k: round_kwargs.pop(k) for k in
                                                   ("sampling",) if k in round_kwargs})
  fn = round_lib.build_round_fn(task, spec, tx, client_lib.make_client_optimizer(
      client_optimizer), client_lr, algorithm=algorithm, aggregator=aggregator,
      preprocessors=tuple(preprocessors), **round_kwargs)
  if jit:
    fn = jax.jit(fn, **(FAST if compile_fast else {}))
  state = round_lib.init_server_state(task, tx, seed=seed, algorithm=algorithm,
                                      aggregator=aggregator)
  pop = round_lib.init_population(task, num_clients, algorithm=algorithm,
                                  preprocessors=tuple(preprocessors))
  return Harness(fn, state, pop)


@pytest.fixture(scope="session")
def harness():
  """The :func:`build` function, as a fixture for tests that prefer one."""
  return build


def quadratic_task(w0) -> Task:
  """Per-example loss ``0.5 * a * ||w - b||^2`` from ``w0`` (gradient ``a (w - b)``): a task
  whose local optimum and steps NumPy references compute in closed form."""

  def per_example_loss(trainable, frozen, batch):
    del frozen
    return 0.5 * batch["a"] * jnp.sum((trainable["w"] - batch["b"]) ** 2, axis=-1)

  def per_example_metrics(trainable, frozen, batch):
    loss = per_example_loss(trainable, frozen, batch)
    return {"loss": loss, "accuracy": jnp.zeros_like(loss)}

  return Task(init_trainable=lambda key: {"w": jnp.asarray(w0, jnp.float32)}, frozen={},
              per_example_loss=per_example_loss, per_example_metrics=per_example_metrics)
