"""Config -> the round's parts: server optimizer, algorithm, aggregation, weights.

The config edge of the simulator: everything here reads a (validated)
``ml_collections`` config and returns typed values; nothing below it sees the
config.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections
import numpy as np
import optax

from fedjax_mm import aggregation, algorithms, client as client_lib, configuration, schedules
from fedjax_mm.aggregation import AGGREGATORS, PREPROCESSORS, WRAPPERS
from fedjax_mm.algorithms import ALGORITHMS
from fedjax_mm.data import federated
from fedjax_mm.server import SERVER
from fedjax_mm.simulation import weights as weights_lib
from fedjax_mm.types import Task


class RoundParts(NamedTuple):
  """The composable parts of a round, built from a config."""

  algorithm: algorithms.Algorithm
  preprocessors: tuple[aggregation.Preprocessor, ...]
  aggregator: aggregation.Aggregator


def schedule(section: ml_collections.ConfigDict, num_rounds: int) -> optax.ScalarOrSchedule:
  return schedules.make_schedule(
      section.schedule, section.learning_rate, num_rounds=num_rounds,
      warmup_rounds=section.warmup_rounds, decay_rate=section.decay_rate,
      end_value=section.end_value, step_rounds=section.step_rounds)


# Where each run-context value of a part comes from, to name it in an error.
CONTEXT_PATHS = {
    "cohort_size": "clients_per_round",
    "client_optimizer": "client.optimizer",
    "client_momentum": "client.momentum",
    "learning_rate": "server.learning_rate",
    "aggregator_kind": "aggregation.kind",
    "aggregator_rank": "aggregation.canonical.rank",
    "max_stack_bytes": "aggregation.max_stack_mib",
    "inner": "aggregation.kind",
}


def _built(registry, section, path: str, context: dict):
  try:
    return registry.build(section, path, context, CONTEXT_PATHS)
  except ValueError as e:
    raise configuration.ConfigError(str(e)) from None


def server_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """``config.server`` -> the server's optax transform (its schedule over rounds)."""
  g = config.aggregation
  rank = g.canonical.rank if g.kind == "canonical" else 0
  context = dict(learning_rate=schedule(config.server, config.num_rounds),
                 aggregator_kind=g.kind, aggregator_rank=rank or None)
  return _built(SERVER, config.server, "server", context)


def client_optimizer(config: ml_collections.ConfigDict) -> client_lib.ClientOptimizerFactory:
  return client_lib.make_client_optimizer(config.client.optimizer,
                                          momentum=config.client.momentum)


def max_stack_bytes(config: ml_collections.ConfigDict) -> int:
  return int(config.aggregation.max_stack_mib * 2**20)


def round_parts(config: ml_collections.ConfigDict, template=None) -> RoundParts:
  """``config.algorithm``, ``.preprocess``, ``.aggregation`` and ``.wrap`` -> :class:`RoundParts`.

  ``template`` (one client's update, e.g. ``jax.eval_shape`` of the trainable
  init) lets an aggregator size its memory plan (e.g. CRA's ``path="auto"``).
  """
  momentum = config.client.momentum if config.client.optimizer == "momentum" else 0.0
  context = dict(client_optimizer=config.client.optimizer, client_momentum=momentum,
                 cohort_size=config.clients_per_round, template=template,
                 max_stack_bytes=max_stack_bytes(config))
  algorithm = _built(ALGORITHMS, config.algorithm, "algorithm", context)
  preprocessors = []
  for name in configuration.chain_names(config.preprocess.chain):
    section = ml_collections.ConfigDict({"kind": name, name: config.preprocess[name]})
    preprocessors.append(_built(PREPROCESSORS, section, "preprocess", context))
  aggregator = _built(AGGREGATORS, config.aggregation, "aggregation", context)
  for name in configuration.chain_names(config.wrap.chain, "wrap"):
    section = ml_collections.ConfigDict({"kind": name, name: config.wrap[name]})
    aggregator = _built(WRAPPERS, section, "wrap", {**context, "inner": aggregator})
  return RoundParts(algorithm, tuple(preprocessors), aggregator)


def aggregation_weights(config: ml_collections.ConfigDict, train: federated.FederatedData,
                        task: Task) -> np.ndarray:
  """``[K]`` aggregation weights by ``config.aggregation.weighting``.

  ``num_examples`` counts the rows that can train (``task.example_mask``):
  an image without a caption moves nothing, so it must not weigh.
  """
  weighting = config.aggregation.weighting
  if weighting == "num_examples":
    return federated.trainable_sizes(train, task.example_mask).astype(np.float32)
  if weighting == "uniform":
    return np.ones((train.num_clients,), np.float32)
  try:
    return weights_lib.load_custom_weights(config.aggregation.custom_weights_path,
                                           train.num_clients)
  except ValueError as e:
    raise configuration.ConfigError(f"config.aggregation.custom_weights_path: {e}") from None


def truncation_report(schedule_: federated.LocalSchedule,
                      train: federated.FederatedData) -> dict[str, float] | None:
  """How much data the step cap hides in epochs mode (None when nothing is cut).

  Returns:
    ``{"fraction_of_clients", "fraction_of_rows", "steps_needed"}``: clients
    whose ``num_epochs`` passes need more than ``num_steps`` steps, the share
    of all rows they leave unseen, and the step cap that would cover all.
  """
  if schedule_.mode != "epochs":
    return None
  sizes = np.asarray(train.sizes).astype(np.int64)
  needed = schedule_.num_epochs * -(-sizes // schedule_.batch_size)
  cut = needed > schedule_.num_steps
  if not np.any(cut):
    return None
  covered = np.minimum(sizes, schedule_.num_steps * schedule_.batch_size)
  return {"fraction_of_clients": float(np.mean(cut)),
          "fraction_of_rows": float(1.0 - covered.sum() / max(sizes.sum(), 1)),
          "steps_needed": int(needed.max())}
