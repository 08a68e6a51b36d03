"""The reference points a federated run is read against: the floor and the centralized ceiling.

* floor: the untrained model, the run's round-0 parameters
  (:func:`fedjax_mm.types.initial_trainable`), so every federated curve
  starts from it;
* centralized: the same model trained from the same parameters on the union
  of the clients' training rows (``fedjax_mm.centralized``), with Adam at the
  clients' learning rate, for a given number of steps: by default the
  federated run's example budget (rounds x clients per round x local steps
  x local batch) in batches of ``batch_size``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import ml_collections
import numpy as np
import optax

from fedjax_mm import centralized as centralized_lib
from fedjax_mm import evaluation
from fedjax_mm.data import federated
from fedjax_mm.types import PyTree, Task, initial_trainable

Evaluate = Callable[[PyTree], dict]


class Reference(NamedTuple):
  """A reference model and its evaluation summary (``steps``: 0 for the floor)."""

  trainable: PyTree
  summary: dict
  steps: int


def evaluator(task: Task, test: federated.FederatedData, batch_size: int) -> Evaluate:
  """``trainable -> evaluation summary`` on ``test`` (jitted once).

  The data and the frozen towers are arguments of the compiled program, not
  closed-over constants: a real LM's weights as constants would cost minutes
  of constant folding.
  """
  fn = jax.jit(evaluation.build_eval_fn(task, test, batch_size))
  test, frozen = jax.device_put(test), jax.device_put(task.frozen)
  return lambda trainable: evaluation.summarize(jax.device_get(fn(trainable, test, frozen)))


def example_budget(config: ml_collections.ConfigDict) -> int:
  """Examples one federated run trains on: rounds x clients per round x local steps x batch."""
  return (config.num_rounds * config.clients_per_round * config.local.num_steps
          * config.local.batch_size)


def budget_steps(config: ml_collections.ConfigDict, batch_size: int) -> int:
  """Centralized steps of ``batch_size`` with the federated example budget (at least 1)."""
  return max(example_budget(config) // batch_size, 1)


def sequential_steps(config: ml_collections.ConfigDict, train: federated.FederatedData) -> int:
  """The federated run's sequential steps: rounds x the mean client's local steps.

  In epochs mode a client takes its epochs' batches, capped at
  ``local.num_steps``; the mean is rounded (at least 1).
  """
  if config.local.mode != "epochs":
    return config.num_rounds * config.local.num_steps
  sizes = np.asarray(train.sizes)
  steps = np.minimum(config.local.num_steps,
                     config.local.num_epochs * -(-sizes // config.local.batch_size))
  return config.num_rounds * max(int(round(float(steps.mean()))), 1)


def floor(task: Task, seed: int, evaluate: Evaluate) -> Reference:
  """The untrained model: the federated run's round-0 parameters for ``seed``."""
  init = initial_trainable(task, seed)
  return Reference(init, evaluate(init), 0)


def centralized(config: ml_collections.ConfigDict, task: Task, train: federated.FederatedData,
                evaluate: Evaluate, *, batch_size: int, num_steps: int | None = None,
                progress: bool = False) -> Reference:
  """Centralized training from the floor's parameters on all of ``train``'s rows.

  Args:
    config: the federated run's config (seed, budget, client learning rate).
    task: the model.
    train: the clients' training rows (client boundaries ignored).
    evaluate: ``trainable -> summary`` (:func:`evaluator`).
    batch_size: examples per step.
    num_steps: default :func:`budget_steps` (the federated example budget).
    progress: show a progress bar.
  """
  steps = budget_steps(config, batch_size) if num_steps is None else num_steps
  trained = centralized_lib.train(
      task, train, num_steps=steps, batch_size=batch_size,
      optimizer=optax.adam(config.client.learning_rate), seed=config.seed,
      trainable=initial_trainable(task, config.seed), progress=progress)
  return Reference(trained, evaluate(trained), steps)
