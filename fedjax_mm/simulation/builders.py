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
from fedjax_mm.aggregation.canonical_streamed import streamable
from fedjax_mm.data import federated
from fedjax_mm.server import fedopt
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


def server_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  s = config.server
  opm = None
  if s.optimizer == "opm":
    opm = dict(rank=config.aggregation.canonical_rank or None, variant=s.opm_variant,
               basis_momentum=s.basis_momentum, basis_step=s.basis_step,
               retraction=s.retraction, procrustes=bool(s.procrustes), residual=s.opm_residual)
  return fedopt.make_server_optimizer(
      s.optimizer, learning_rate=schedule(s, config.num_rounds),
      momentum=s.momentum if s.optimizer in ("fedavgm", "opm") else 0.0,
      b1=s.b1, b2=s.b2, tau=s.tau, convention=s.convention,
      bias_correction=s.bias_correction, tau_placement=s.tau_placement,
      initial_v=s.initial_v, opm=opm)


def client_optimizer(config: ml_collections.ConfigDict) -> client_lib.ClientOptimizerFactory:
  return client_lib.make_client_optimizer(config.client.optimizer,
                                          momentum=config.client.momentum)


def canonical_streamed(config: ml_collections.ConfigDict, template=None) -> bool:
  """Whether the canonical aggregator takes its streamed path.

  ``canonical_path="auto"`` streams when the stacked cohort (``template``
  x ``clients_per_round``) would exceed ``aggregation.max_stack_mib`` and
  the options allow streaming; otherwise the stacked path is kept (and the
  round refuses it over the cap, naming the numbers).
  """
  g = config.aggregation
  if g.canonical_path != "auto":
    return g.canonical_path == "streamed"
  if template is None:
    return False
  too_big = aggregation.stack_bytes(template, config.clients_per_round) > g.max_stack_mib * 2**20
  return too_big and streamable(g.canonical_reliability, g.canonical_score_with)


def round_parts(config: ml_collections.ConfigDict, template=None) -> RoundParts:
  """``config.algorithm`` and ``config.aggregation`` -> :class:`RoundParts`.

  ``template`` (one client's update, e.g. ``jax.eval_shape`` of the trainable
  init) lets ``canonical_path="auto"`` pick the stacked or streamed path.
  """
  a, g = config.algorithm, config.aggregation
  momentum = config.client.momentum if config.client.optimizer == "momentum" else 0.0
  algorithm = algorithms.make_algorithm(a.name, prox_mu=a.prox_mu, client_momentum=momentum)
  preprocessors = (aggregation.l2_clip(g.clip_norm),) if g.clip_norm > 0 else ()
  aggregator = aggregation.make_aggregator(
      g.kind, cohort_size=config.clients_per_round, trim_fraction=g.trim_fraction,
      num_byzantine=g.num_byzantine, num_selected=g.num_selected,
      smoothing=g.gm_smoothing, max_iters=g.gm_max_iters, rank=g.canonical_rank,
      reliability=g.canonical_reliability, temperature=g.canonical_temperature,
      fusion=g.canonical_fusion, score_with=g.canonical_score_with,
      decompose=g.canonical_decompose,
      streamed=g.kind == "canonical" and canonical_streamed(config, template),
      density=g.merge_density, merge_scale=g.merge_scale, knots_merge_kind=g.knots_merge,
      knots_rank=g.knots_rank)
  return RoundParts(algorithm, preprocessors, aggregator)


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
