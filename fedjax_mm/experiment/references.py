"""The reference points a federated run is read against: the floor and the centralized ceiling.

* floor: the untrained model, the run's round-0 parameters
  (:func:`fedjax_mm.types.initial_trainable`), so every federated curve
  starts from it;
* centralized: the same model trained from the same parameters on the union
  of the clients' training rows (``fedjax_mm.centralized``), with Adam at the
  clients' learning rate (or a tuned one), for a given number of steps: by
  default the federated run's example budget (:func:`example_budget`: the
  example-gradients its clients actually compute) in batches of
  ``batch_size``.
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


def evaluator(task: Task, test: federated.FederatedData, batch_size: int, *,
              per_client: bool = False) -> Evaluate:
  """``trainable -> evaluation summary`` on ``test`` (jitted once).

  The data and the frozen towers are arguments of the compiled program, not
  closed-over constants: a real LM's weights as constants would cost minutes
  of constant folding. With ``per_client`` the summary also holds
  ``"clients": {"accuracy": [...], "count": [...]}``, each evaluation client's
  accuracy and test rows in client order (None for a client without rows): what bootstrap intervals over clients resample.
  """
  fn = jax.jit(evaluation.build_eval_fn(task, test, batch_size))
  test, frozen = jax.device_put(test), jax.device_put(task.frozen)

  def evaluate(trainable: PyTree) -> dict:
    sums = jax.device_get(fn(trainable, test, frozen))
    summary = evaluation.summarize(sums)
    if per_client:
      summary["clients"] = evaluation.per_client_accuracy(sums)
    return summary

  return evaluate


def example_gradients(sizes: np.ndarray, schedule: federated.LocalSchedule) -> np.ndarray:
  """Example-gradients each client of ``sizes`` rows computes in one round (``[K]`` int).

  The batch slots :func:`fedjax_mm.data.federated.client_plan` fills: in
  steps mode ``S x min(B, n)`` (a client smaller than a batch uses all its
  rows each step); in epochs mode the first ``S`` steps of ``E`` passes of
  ``ceil(n / B)`` batches, i.e. ``E x n`` rows unless the step cap ``S``
  truncates them. A client without rows computes none.
  """
  n = np.asarray(sizes, np.int64)
  S, B = schedule.num_steps, schedule.batch_size
  if schedule.mode == "steps":
    return np.where(n > 0, S * np.minimum(B, n), 0)
  per_epoch = -(-np.maximum(n, 1) // B)                  # steps per pass
  full, part = np.divmod(np.minimum(S, schedule.num_epochs * per_epoch), per_epoch)
  return np.where(n > 0, full * n + np.minimum(part * B, n), 0)


def example_budget(config: ml_collections.ConfigDict, train: federated.FederatedData) -> int:
  """Example-gradients one federated run computes: rounds x cohort x a sampled client's.

  A sampled client's count is :func:`example_gradients` averaged over the
  population (uniform and one-pass sampling draw every client alike; size
  sampling weights it by the rows, the first-order inclusion probability). In
  steps mode with clients of at least a batch this is rounds x clients per
  round x local steps x batch; in epochs mode the step cap counts only where
  it is reached (a one-pass client of 6 rows computes 6, not 20 x 2).
  """
  sizes = np.asarray(train.sizes)
  per_client = example_gradients(sizes, schedule_of(config))
  weights = sizes if config.sampling == "size" else np.ones_like(sizes)
  mean = float(np.sum(per_client * weights) / max(np.sum(weights), 1))
  return int(round(config.num_rounds * config.clients_per_round * mean))


def schedule_of(config: ml_collections.ConfigDict) -> federated.LocalSchedule:
  """The run's local schedule (``config.local``)."""
  local = config.local
  return federated.LocalSchedule(local.mode, local.num_steps, local.batch_size,
                                 local.num_epochs)


def budget_steps(config: ml_collections.ConfigDict, train: federated.FederatedData,
                 batch_size: int) -> int:
  """Centralized steps of ``batch_size`` with the federated example budget (at least 1)."""
  return max(example_budget(config, train) // batch_size, 1)


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
                learning_rate: float | None = None, progress: bool = False) -> Reference:
  """Centralized training from the floor's parameters on all of ``train``'s rows.

  Args:
    config: the federated run's config (seed, budget, client learning rate).
    task: the model.
    train: the clients' training rows (client boundaries ignored).
    evaluate: ``trainable -> summary`` (:func:`evaluator`).
    batch_size: examples per step.
    num_steps: default :func:`budget_steps` (the federated example budget).
    learning_rate: Adam's; default the clients' (the comparison tunes it).
    progress: show a progress bar.
  """
  steps = budget_steps(config, train, batch_size) if num_steps is None else num_steps
  lr = config.client.learning_rate if learning_rate is None else learning_rate
  trained = centralized_lib.train(
      task, train, num_steps=steps, batch_size=batch_size,
      optimizer=optax.adam(lr), seed=config.seed,
      trainable=initial_trainable(task, config.seed), progress=progress)
  return Reference(trained, evaluate(trained), steps)
