"""Up-front validation of run configs: one clear line per mistake.

Every check runs before any data is generated or anything is compiled, and
the error names the field, the allowed values and what was given.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import ml_collections

from fedjax_mm import aggregation, algorithms, checks
from fedjax_mm.aggregation import canonical, canonical_streamed, knots
from fedjax_mm import client as client_lib
from fedjax_mm import schedules
from fedjax_mm.data import federated
from fedjax_mm.server import fedopt, orthogonal_momentum
from fedjax_mm.simulation import round as round_lib

DATASETS = ("synthetic", "world", "real")
WEIGHTINGS = ("num_examples", "uniform", "custom")
CANONICAL_PATHS = ("auto", "stacked", "streamed")


def _schedule_fields(section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  section.schedule = "constant"   # constant | cosine | warmup_cosine | exponential | step
  section.warmup_rounds = 0
  section.decay_rate = 0.1
  section.step_rounds = 0
  section.end_value = 0.0
  return section


def client_section(optimizer: str, learning_rate: float) -> ml_collections.ConfigDict:
  """Default ``config.client``: optimizer, learning rate and its schedule."""
  return _schedule_fields(ml_collections.ConfigDict(dict(
      optimizer=optimizer, learning_rate=learning_rate, momentum=0.9)))


def server_section(optimizer: str, learning_rate: float) -> ml_collections.ConfigDict:
  """Default ``config.server``; adaptive options unset mean "the convention's value"."""
  section = ml_collections.ConfigDict(dict(
      optimizer=optimizer, learning_rate=learning_rate, momentum=0.9, convention="reddi",
      # opm (Fed-CMP's orthogonality-preserved momentum, a reconstruction; needs
      # aggregation.kind='canonical'; `momentum` is its β): see server/orthogonal_momentum.py
      opm_variant="stiefel",      # stiefel | span
      basis_momentum=0.5,         # stiefel: β_B of the basis's tangent momentum
      basis_step=1.0,             # stiefel: γ, the basis step before retraction
      retraction="polar",         # polar | qr
      procrustes=True,            # align each round's basis to the smoothed one
      opm_residual="keep"))       # keep | drop: the update outside the basis's span
  for name, kind in (("b1", float), ("b2", float), ("tau", float), ("bias_correction", str),
                     ("tau_placement", str), ("initial_v", float)):
    section[name] = ml_collections.config_dict.placeholder(kind)
  return _schedule_fields(section)


def algorithm_section(name: str = "fedavg") -> ml_collections.ConfigDict:
  """Default ``config.algorithm``: the client/server work and its options."""
  return ml_collections.ConfigDict(dict(
      name=name,          # fedavg | fedprox | scaffold | fednova
      prox_mu=0.01))      # FedProx's proximal coefficient


def aggregation_section() -> ml_collections.ConfigDict:
  """Default ``config.aggregation``: weights, the aggregator and its options."""
  return ml_collections.ConfigDict(dict(
      weighting="num_examples",   # num_examples | uniform | custom
      custom_weights_path="",     # .npy of [num_clients] weights, for custom
      kind="mean",                # mean | median | trimmed_mean | krum | multi_krum |
                                  # geometric_median | canonical | ties | knots
      clip_norm=0.0,              # > 0: clip each client's delta to this L2 norm first
      trim_fraction=0.1,          # trimmed_mean: dropped at each end per coordinate
      num_byzantine=0,            # krum / multi_krum: tolerated faulty clients f
      num_selected=0,             # multi_krum: m averaged (0: clients_per_round - f)
      gm_smoothing=1e-6,          # geometric_median: Weiszfeld smoothing
      gm_max_iters=100,
      canonical_rank=0,           # canonical (Fed-CMP's CRA): basis size per matrix (0: full)
      canonical_reliability="explained",   # explained | agreement | inverse_variance | uniform
      canonical_temperature=0.1,  # canonical: softmax temperature of the reliabilities
      canonical_fusion="coefficients",   # coefficients (U Σ α_k C_k) | mean (basis only)
      canonical_score_with="current",    # current | previous (last round's basis)
      canonical_decompose="updates",     # updates | weights (the local projectors W - ΔW_k)
      canonical_path="auto",      # auto (stacked if under max_stack_mib) | stacked | streamed
      merge_density=0.2,          # ties / knots: share of each client's entries kept
      merge_scale=1.0,            # ties / knots: λ on the merged update
      knots_merge="ties",         # knots: ties | mean, on the aligned coefficients
      knots_rank=0,               # knots: SVD rank per matrix (0: full)
      max_stack_mib=4096.0))      # whole-cohort aggregators: cap on the stacked updates


class ConfigError(ValueError):
  """An invalid config field; the message names the field and allowed values."""


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
  node = config
  for part in path.split("."):
    if part not in node:
      raise ConfigError(f"config.{path}: missing (required field)")
    node = node[part]
  return node


def _one_of(config, path: str, allowed: Sequence[str]) -> None:
  try:
    checks.one_of(f"config.{path}", _get(config, path), allowed)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _number(config, path: str, ok: Callable[[float], bool], rule: str,
            integer: bool = False) -> None:
  try:
    checks.number(f"config.{path}", _get(config, path), ok, rule, integer=integer)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _validate_parts(config: ml_collections.ConfigDict) -> None:
  """``config.algorithm`` and ``config.aggregation`` (and how they combine)."""
  _one_of(config, "algorithm.name", algorithms.ALGORITHMS)
  _number(config, "algorithm.prox_mu", lambda v: v >= 0, ">= 0")
  needs_sgd = {"fednova": "normalizes by the effective number of SGD steps",
               "scaffold": "estimates client gradients as delta / (steps x lr) "
                           "(option II), in gradient units only for SGD steps"}
  if config.algorithm.name in needs_sgd and config.client.optimizer not in ("sgd", "momentum"):
    raise ConfigError(
        f"config.client.optimizer: algorithm.name={config.algorithm.name!r} "
        f"{needs_sgd[config.algorithm.name]}; it needs ('sgd', 'momentum') clients, got "
        f"{config.client.optimizer!r}")
  _one_of(config, "aggregation.weighting", WEIGHTINGS)
  if config.aggregation.weighting == "custom":
    path = _get(config, "aggregation.custom_weights_path")
    if not path or not os.path.isfile(path):
      raise ConfigError("config.aggregation.custom_weights_path: must name an existing "
                        f".npy file of [data.num_clients] weights, got {path!r}")
  if config.sampling == "size" and config.aggregation.weighting == "num_examples":
    raise ConfigError(
        "config.sampling: 'size' with aggregation.weighting='num_examples' counts a "
        "client's size twice (drawn in proportion to it, then weighted by it); use "
        "aggregation.weighting='uniform' with size sampling, or sampling='uniform'")
  _one_of(config, "aggregation.kind", aggregation.AGGREGATORS)
  _number(config, "aggregation.clip_norm", lambda v: v >= 0, ">= 0 (0 = no clipping)")
  _number(config, "aggregation.trim_fraction", lambda v: 0 <= v < 0.5, "in [0, 0.5)")
  c = config.clients_per_round
  _number(config, "aggregation.num_byzantine", lambda v: 0 <= v < c,
          f"in [0, clients_per_round={c})", integer=True)
  _number(config, "aggregation.num_selected", lambda v: 0 <= v <= c,
          f"in [0, clients_per_round={c}] (0 = clients_per_round - num_byzantine)",
          integer=True)
  _number(config, "aggregation.gm_smoothing", lambda v: v > 0, "> 0")
  _number(config, "aggregation.gm_max_iters", lambda v: v >= 1, ">= 1", integer=True)
  _number(config, "aggregation.max_stack_mib", lambda v: v > 0, "> 0")
  _number(config, "aggregation.canonical_rank", lambda v: v >= 0, ">= 0 (0 = full rank)",
          integer=True)
  _one_of(config, "aggregation.canonical_reliability", canonical.RELIABILITIES)
  _number(config, "aggregation.canonical_temperature", lambda v: v > 0, "> 0")
  _one_of(config, "aggregation.canonical_fusion", canonical.FUSIONS)
  _one_of(config, "aggregation.canonical_score_with", canonical.SCORINGS)
  _one_of(config, "aggregation.canonical_decompose", canonical.DECOMPOSITIONS)
  _one_of(config, "aggregation.canonical_path", CANONICAL_PATHS)
  _number(config, "aggregation.merge_density", lambda v: 0 < v <= 1, "in (0, 1]")
  _number(config, "aggregation.merge_scale", lambda v: v > 0, "> 0")
  _one_of(config, "aggregation.knots_merge", knots.MERGES)
  _number(config, "aggregation.knots_rank", lambda v: v >= 0, ">= 0 (0 = full rank)",
          integer=True)
  g = config.aggregation
  if g.kind == "canonical" and g.canonical_path == "streamed" and (
      not canonical_streamed.streamable(g.canonical_reliability, g.canonical_score_with)):
    raise ConfigError(
        "config.aggregation.canonical_path: 'streamed' scores each client as it streams "
        "past, before this round's basis exists: it needs canonical_score_with='previous' "
        f"and canonical_reliability in {canonical_streamed.STREAMABLE_RELIABILITIES}, got "
        f"{g.canonical_score_with!r} and {g.canonical_reliability!r}")
  if config.server.optimizer == "opm" and g.kind != "canonical":
    raise ConfigError(
        "config.server.optimizer: 'opm' moves the canonical aggregator's shared basis, so it "
        f"needs aggregation.kind='canonical', got {g.kind!r}")


def _schedule(config, prefix: str) -> None:
  _one_of(config, f"{prefix}.schedule", schedules.SCHEDULES)
  _number(config, f"{prefix}.learning_rate", lambda v: v > 0, "> 0")
  _number(config, f"{prefix}.warmup_rounds", lambda v: v >= 0, ">= 0", integer=True)
  _number(config, f"{prefix}.decay_rate", lambda v: v > 0, "> 0")
  _number(config, f"{prefix}.step_rounds", lambda v: v >= 0, ">= 0", integer=True)
  _number(config, f"{prefix}.end_value", lambda v: v >= 0, ">= 0")


def _validate_world(config: ml_collections.ConfigDict) -> None:
  from fedjax_mm.data import partition, world
  from fedjax_mm.models import mllm, projector
  from fedjax_mm.setups import fedma
  positive_ints = ("data.examples_per_client", "data.public_vision_examples",
                   "data.public_text_examples", "model.vision.patch_size",
                   "model.vision.width", "model.vision.depth", "model.vision.num_heads",
                   "model.vision.mlp_dim", "model.vision.steps", "model.vision.batch_size",
                   "model.lm.width", "model.lm.depth", "model.lm.num_heads", "model.lm.mlp_dim",
                   "model.lm.max_len", "model.lm.steps", "model.lm.batch_size")
  for path in positive_ints:
    _number(config, path, lambda v: v >= 1, ">= 1", integer=True)
  if 32 % config.model.vision.patch_size:
    raise ConfigError("config.model.vision.patch_size: must divide the image size 32, "
                      f"got {config.model.vision.patch_size}")
  for path in ("model.vision.learning_rate", "model.lm.learning_rate", "model.temperature"):
    _number(config, path, lambda v: v > 0, "> 0")
  for path in ("data.world.distractor_prob",):
    _number(config, path, lambda v: 0 <= v <= 1, "in [0, 1]")
  for path in ("data.world.noise", "data.world.jitter"):
    _number(config, path, lambda v: v >= 0, ">= 0")
  _one_of(config, "data.feature_dtype", tuple(fedma.FEATURE_DTYPES))
  _number(config, "data.eval_clients", lambda v: v >= 0, ">= 0 (0 = all clients)",
          integer=True)
  _one_of(config, "model.vision.stem", ("patch", "overlap", "conv"))
  _one_of(config, "model.objective", mllm.OBJECTIVES)
  _one_of(config, "model.projector.kind", projector.PROJECTOR_KINDS)
  _number(config, "model.projector.pool_to", lambda v: v >= 0, ">= 0 (0 = no pooling)",
          integer=True)
  _number(config, "model.projector.hidden_dim", lambda v: v >= 0, ">= 0 (0 = LM width)",
          integer=True)
  vis_tokens = config.model.projector.pool_to or (32 // config.model.vision.patch_size) ** 2
  needed = max(vis_tokens + 2 + world.CAPTION_LENGTH, 2 * world.CAPTION_LENGTH + 1)
  _number(config, "model.lm.max_len", lambda v: v >= needed,
          f">= {needed} (visual tokens + BOS + SEP + caption, and pretraining pairs)",
          integer=True)
  _one_of(config, "data.partition.kind", ("iid", "dirichlet", "shards"))
  _one_of(config, "data.partition.quantity", ("equal", "power_law"))
  _one_of(config, "data.partition.style_mode", ("none", "per_client", "iid"))
  try:
    partition.validate_spec(fedma.partition_spec(config))
  except ValueError as e:
    raise ConfigError(f"config.data.partition: {e}") from None


def _validate_real(config: ml_collections.ConfigDict) -> None:
  from fedjax_mm.setups import fedma_real
  _number(config, "data.labelled_examples", lambda v: v >= 0, ">= 0 (0 = the whole split)",
          integer=True)
  _one_of(config, "data.labelled", ("fashion_mnist_captions", "fashion_mnist"))
  _one_of(config, "data.captioned", ("tux_paint_stamps", ""))
  _one_of(config, "data.feature_dtype", tuple(fedma_real.FEATURE_DTYPES))
  _number(config, "data.eval_clients", lambda v: v >= 0, ">= 0 (0 = all clients)",
          integer=True)
  _one_of(config, "data.partition.kind", ("iid", "dirichlet"))
  _number(config, "data.partition.alpha", lambda v: v > 0, "> 0")
  _one_of(config, "model.objective", ("captioning",))
  _one_of(config, "model.vision_tokens", fedma_real.VISION_TOKENS)
  _one_of(config, "model.feature_norm", fedma_real.FEATURE_NORMS)
  _number(config, "model.lm_layers", lambda v: 0 <= v <= fedma_real.LM_LAYERS,
          f"in [0, {fedma_real.LM_LAYERS}] (0 = all)", integer=True)
  _one_of(config, "model.lm_dtype", tuple(fedma_real.LM_DTYPES))
  _number(config, "model.max_caption_tokens", lambda v: v >= 2, ">= 2 (a word and the end)",
          integer=True)
  if not isinstance(config.model.prompt, str) or not config.model.prompt:
    raise ConfigError("config.model.prompt: must be a non-empty string (its last token's "
                      f"output predicts the caption's first word), got {config.model.prompt!r}")
  _one_of(config, "model.projector.kind", ("linear", "mlp2x_gelu"))
  _number(config, "model.projector.hidden_dim", lambda v: v >= 0, ">= 0 (0 = LM width)",
          integer=True)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` on the first invalid field."""
  _number(config, "seed", lambda v: v >= 0, ">= 0", integer=True)
  _number(config, "num_rounds", lambda v: v >= 1, ">= 1", integer=True)
  _one_of(config, "data.name", DATASETS)
  _number(config, "data.num_clients", lambda v: v >= 1, ">= 1", integer=True)
  k = _get(config, "data.num_clients")
  _number(config, "clients_per_round", lambda v: 1 <= v <= k,
          f"in [1, data.num_clients={k}]", integer=True)
  _number(config, "chunk_size", lambda v: v >= 0, ">= 0 (0 = whole cohort)", integer=True)
  _number(config, "num_devices", lambda v: v >= 0, ">= 0 (0 = all devices)", integer=True)
  _one_of(config, "sampling", round_lib.SAMPLINGS)
  rounds, c = config.num_rounds, config.clients_per_round
  if config.sampling == "one_pass" and rounds * c > k:
    # Past K // C rounds the one-pass order would wrap and revisit clients,
    # silently breaking the regime the run asked for.
    raise ConfigError(
        f"config.sampling: 'one_pass' visits each client at most once, so num_rounds x "
        f"clients_per_round must be <= data.num_clients; got num_rounds={rounds} x "
        f"clients_per_round={c} = {rounds * c} > data.num_clients={k} (use num_rounds <= "
        f"{k // c}, fewer clients_per_round or more clients)")
  if config.data.name == "synthetic":
    _number(config, "data.alpha", lambda v: v >= 0, ">= 0")
    _number(config, "data.beta", lambda v: v >= 0, ">= 0")
    _number(config, "data.num_features", lambda v: v >= 1, ">= 1", integer=True)
    _number(config, "data.num_classes", lambda v: v >= 2, ">= 2", integer=True)
    _number(config, "data.size_sigma", lambda v: v >= 0, ">= 0")
    _number(config, "data.min_size", lambda v: v >= 2, ">= 2 (a train and a test row)",
            integer=True)
    _number(config, "data.max_size", lambda v: v >= config.data.min_size,
            f">= data.min_size={config.data.min_size}", integer=True)
  if config.data.name == "world":
    _validate_world(config)
  if config.data.name == "real":
    _validate_real(config)
  _number(config, "data.test_fraction", lambda v: 0 < v < 1, "in (0, 1)")
  _one_of(config, "local.mode", federated.LOCAL_MODES)
  _number(config, "local.num_steps", lambda v: v >= 1, ">= 1", integer=True)
  _number(config, "local.batch_size", lambda v: v >= 1, ">= 1", integer=True)
  _number(config, "local.num_epochs", lambda v: v >= 1, ">= 1", integer=True)
  _one_of(config, "client.optimizer", client_lib.CLIENT_OPTIMIZERS)
  _number(config, "client.momentum", lambda v: 0 <= v < 1, "in [0, 1)")
  _schedule(config, "client")
  _one_of(config, "server.optimizer", fedopt.SERVER_OPTIMIZERS)
  _one_of(config, "server.convention", fedopt.CONVENTIONS)
  _number(config, "server.momentum", lambda v: 0 <= v < 1, "in [0, 1)")
  for name in ("b1", "b2"):
    if _get(config, f"server.{name}") is not None:
      _number(config, f"server.{name}", lambda v: 0 <= v < 1, "in [0, 1) or unset")
  for name in ("tau", "initial_v"):
    if _get(config, f"server.{name}") is not None:
      _number(config, f"server.{name}", lambda v: v >= 0, ">= 0 or unset")
  if _get(config, "server.bias_correction") is not None:
    _one_of(config, "server.bias_correction", fedopt.BIAS_CORRECTIONS)
  if _get(config, "server.tau_placement") is not None:
    _one_of(config, "server.tau_placement", fedopt.TAU_PLACEMENTS)
  _schedule(config, "server")
  if config.server.optimizer == "opm":
    _one_of(config, "server.opm_variant", orthogonal_momentum.VARIANTS)
    _one_of(config, "server.retraction", orthogonal_momentum.RETRACTIONS)
    _one_of(config, "server.opm_residual", orthogonal_momentum.RESIDUALS)
    _number(config, "server.basis_momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    _number(config, "server.basis_step", lambda v: v > 0, "> 0")
    _one_of(config, "server.procrustes", (True, False))
  try:  # Options can conflict only once resolved against the convention.
    s = config.server
    fedopt.make_server_optimizer(
        s.optimizer, learning_rate=s.learning_rate,
        momentum=s.momentum if s.optimizer in ("fedavgm", "opm") else 0.0, b1=s.b1, b2=s.b2,
        tau=s.tau, convention=s.convention, bias_correction=s.bias_correction,
        tau_placement=s.tau_placement, initial_v=s.initial_v)
  except ValueError as e:
    raise ConfigError(f"config.server: {e}") from None
  _validate_parts(config)
  _number(config, "eval_every", lambda v: v >= 0, ">= 0 (0 = only at the end)", integer=True)
  _number(config, "eval_batch_size", lambda v: v >= 1, ">= 1", integer=True)
  _number(config, "checkpoint.every", lambda v: v >= 0, ">= 0 (0 = only at the end)",
          integer=True)
  _number(config, "checkpoint.max_to_keep", lambda v: v >= 1, ">= 1", integer=True)
