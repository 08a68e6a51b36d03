"""Fed-MA on the synthetic multimodal world: frozen towers, federated projector.

Builds, from a config: the world's public splits (images only for the vision
tower, caption text only for the LM: neither sees a pairing, no client holds
them), both towers (shipped for the configs in configs/, else pretrained once
per config and cached on disk), the clients'
image-caption data (partitioned by concept/domain/quantity/style skew and
missing modality), the frozen-feature cache (vision features computed once per
example), and the projector task.

References:
  Liu et al., "Visual Instruction Tuning" (LLaVA stage-1 alignment),
  NeurIPS 2023. Xiong et al., Fed-MA / Fed-CMP, arXiv:2603.26786 (2026).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_mm.data import captions, federated, partition, world
from fedjax_mm.models import mllm, tower_artifacts, towers
from fedjax_mm.models.language import PAD
from fedjax_mm.setups import Setup
from fedjax_mm.types import Task

# Seed offsets of the world's splits: disjoint draws from one config seed.
_VISION_SPLIT, _TEXT_SPLIT, _CLIENT_SPLIT = 101, 202, 303
# The shipped LM's reference loss is measured on text drawn with this offset.
_REFERENCE_SPLIT = 404
FEATURE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_cache_dir() -> str:
  return os.environ.get("FEDJAX_MM_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "fedjax_mm"))


def world_spec(config: ml_collections.ConfigDict) -> world.WorldSpec:
  w = config.data.world
  return world.WorldSpec(distractor_prob=w.distractor_prob, noise=w.noise, jitter=w.jitter)


def vision_config(config: ml_collections.ConfigDict) -> towers.VisionConfig:
  v = config.model.vision
  # The rendering constants are part of the data: a change must not load a
  # tower pretrained on differently drawn images.
  tag = (f"{world_spec(config)}|radii={world.RADII}|seed={config.seed}"
         f"|n={config.data.public_vision_examples}")
  return towers.VisionConfig(
      patch_size=v.patch_size, width=v.width, depth=v.depth, num_heads=v.num_heads,
      mlp_dim=v.mlp_dim, stem=v.stem, steps=v.steps, batch_size=v.batch_size,
      learning_rate=v.learning_rate, seed=config.seed, data_tag=tag)


def lm_config(config: ml_collections.ConfigDict) -> towers.LMConfig:
  lm = config.model.lm
  tag = f"{world_spec(config)}|seed={config.seed}|n={config.data.public_text_examples}"
  return towers.LMConfig(
      vocab_size=world.make_tokenizer().vocab_size, width=lm.width, depth=lm.depth,
      num_heads=lm.num_heads, mlp_dim=lm.mlp_dim, max_len=lm.max_len, steps=lm.steps,
      batch_size=lm.batch_size, learning_rate=lm.learning_rate, seed=config.seed,
      data_tag=tag)


class TowerBuild(NamedTuple):
  """One tower of a config: its name, config, ``() -> params`` and restore target."""

  name: str
  config: Any
  build: Callable[[], Any]
  abstract: Any


def tower_configs(config: ml_collections.ConfigDict
                  ) -> tuple[tuple[str, towers.VisionConfig], tuple[str, towers.LMConfig]]:
  """``(("vit", vision config), ("lm", lm config))``: what names a shipped artifact."""
  return ("vit", vision_config(config)), ("lm", lm_config(config))


def tower_builds(config: ml_collections.ConfigDict, *, progress: bool = True
                 ) -> tuple[TowerBuild, TowerBuild]:
  """The ``(vit, lm)`` pretraining recipes of a config (nothing runs until ``build()``)."""
  spec, tokenizer = world_spec(config), world.make_tokenizer()
  vcfg, lcfg = vision_config(config), lm_config(config)

  def build_vision():
    scenes = world.generate(spec, config.seed + _VISION_SPLIT, config.data.public_vision_examples)
    # Every fact a caption states (the distractor's only where present: -1
    # is skipped by the pretraining loss), plus the rendering domain.
    labels = dict(scenes.attributes(), domain=scenes.domain,
                  has_distractor=scenes.has_distractor.astype(np.int32))
    for k in ("d_shape", "d_color", "d_size", "d_position"):
      labels[k] = np.where(scenes.has_distractor, getattr(scenes, k), -1).astype(np.int32)
    return towers.pretrain_vision(scenes.images, labels, vcfg, progress=progress)

  def build_lm():
    rng = np.random.default_rng(config.seed + _TEXT_SPLIT)
    attrs = world.sample_attributes(spec, rng, config.data.public_text_examples)
    return towers.pretrain_lm(captions.paraphrase_pairs(tokenizer, attrs, rng), lcfg,
                              progress=progress)

  return (TowerBuild("vit", vcfg, build_vision, towers.abstract_vit_params(vcfg)),
          TowerBuild("lm", lcfg, build_lm, towers.abstract_lm_params(lcfg)))


def reference_sequences(config: ml_collections.ConfigDict, n: int = 8) -> np.ndarray:
  """``n`` paraphrase pairs drawn apart from the LM's pretraining text (a fresh seed)."""
  rng = np.random.default_rng(config.seed + _REFERENCE_SPLIT)
  attrs = world.sample_attributes(world_spec(config), rng, n)
  return captions.paraphrase_pairs(world.make_tokenizer(), attrs, rng)


def build_towers(config: ml_collections.ConfigDict, *, progress: bool = True,
                 shipped_dir: str | os.PathLike = tower_artifacts.SHIPPED_DIR
                 ) -> tuple[towers.VisionConfig, Any, towers.LMConfig, Any]:
  """``(vision config, vit params, lm config, lm params)``: shipped, cached or pretrained.

  The towers of the configs in ``configs/`` are shipped
  (``scripts/make_towers.py``): identical bits on every machine. Another
  tower config is pretrained here (logged) and cached in
  ``config.model.cache_dir`` or :func:`default_cache_dir`.
  """
  cache = config.model.cache_dir or default_cache_dir()
  vit, lm = tower_builds(config, progress=progress)
  params = [tower_artifacts.load_or_build(b.name, b.config, b.build, b.abstract,
                                          cache_dir=cache, shipped_dir=shipped_dir)
            for b in (vit, lm)]
  return vit.config, params[0], lm.config, params[1]


def partition_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config.data.partition`` (flat, CLI-friendly) -> a partition spec dict."""
  p = config.data.partition
  spec: dict[str, Any] = {"kind": p.kind}
  if p.kind == "dirichlet":
    spec["alpha"] = p.alpha
  if p.kind == "shards":
    spec["shards_per_client"] = p.shards_per_client
  if p.quantity == "power_law":
    spec["quantity"] = {"kind": "power_law", "exponent": p.quantity_exponent,
                        "min_size": p.min_size}
  if p.domains_per_client:
    spec["domains_per_client"] = p.domains_per_client
  if p.style_mode != "none":
    spec["styles"] = {"mode": p.style_mode}
  if p.missing_fraction:
    spec["missing_modality"] = {"fraction_clients": p.missing_fraction,
                                "caption_rate": p.caption_rate}
  return spec


def client_examples(config: ml_collections.ConfigDict, vcfg: towers.VisionConfig, vit_params
                    ) -> tuple[world.Scenes, np.ndarray]:
  """The clients' scenes and their cached vision features (partition-free).

  Independent of ``config.data.partition``: runs that differ only in how
  the rows are split among clients can share this (the demo does).
  """
  d = config.data
  scenes = world.generate(world_spec(config), config.seed + _CLIENT_SPLIT,
                          d.num_clients * d.examples_per_client)
  vis = mllm.encode_images(vcfg.module(), vit_params, scenes.images,
                           dtype=FEATURE_DTYPES[d.feature_dtype])
  return scenes, np.asarray(vis)


def client_data(config: ml_collections.ConfigDict, scenes: world.Scenes, vis: np.ndarray
                ) -> tuple[federated.FederatedData, federated.FederatedData, dict[str, Any]]:
  """The clients' packed ``(train, test)`` rows from :func:`client_examples`."""
  d = config.data
  tokenizer = world.make_tokenizer()
  seed = config.seed + _CLIENT_SPLIT
  parts = partition.partition(partition_spec(config), num_clients=d.num_clients,
                              concepts=scenes.concepts(), domains=scenes.domain,
                              num_styles=len(world.STYLES), seed=seed)
  styles = partition.example_styles(parts.client_ids, parts.client_styles, seed)
  attrs = scenes._asdict()
  rng = np.random.default_rng(seed)
  probes, probe_attr = captions.probes(tokenizer, attrs, np.maximum(styles, 0), rng)
  # Captions are packed to the left: drop the all-PAD tail columns, so every
  # LM pass (training and the probes) runs on the longest real caption only.
  probes = probes[..., :max(int(np.max(np.sum(probes != PAD, -1))), 1)]
  examples = {"vis": vis, "tokens": probes[:, 0], "has_caption": parts.has_caption,
              "probes": probes, "probe_attr": probe_attr}
  packed = partition.pack_assigned(examples, parts.client_ids, d.num_clients)
  train, test = federated.split_by_position(packed, 1.0 - d.test_fraction)
  # Training rows carry what training reads; evaluation always has the
  # true caption (missing modality is a property of training data).
  train = train.replace(examples={k: train.examples[k] for k in ("vis", "tokens", "has_caption")})
  test = test.replace(examples=dict(test.examples,
                                    has_caption=np.ones(test.num_examples, bool)))
  if 0 < d.eval_clients < d.num_clients:
    # Evaluate on a fixed random subset of clients (all of each one's test
    # rows): the probes cost 6 LM passes per row, and per-client statistics
    # need whole clients, not scattered rows.
    ids = np.random.default_rng(seed + 1).choice(d.num_clients, d.eval_clients, replace=False)
    test = federated.select_clients(test, np.sort(ids))
  info = {"client_examples": int(packed.num_examples),
          "clients_with_data": int(np.sum(np.asarray(packed.sizes) > 0)),
          "caption_rate": float(np.mean(parts.has_caption[parts.client_ids >= 0]))}
  return train, test, info


def make_task(config: ml_collections.ConfigDict, vcfg: towers.VisionConfig,
              lcfg: towers.LMConfig, lm_params) -> Task:
  p = config.model.projector
  task = mllm.fedma_task(
      lcfg.module(), lm_params, vis_dim=vcfg.width, num_vis_tokens=vcfg.module().num_tokens,
      projector_kind=p.kind, pool_to=p.pool_to or None, hidden_dim=p.hidden_dim or None,
      objective=config.model.objective, temperature=config.model.temperature,
      attribute_names=world.ATTRIBUTES)
  # Images without a caption (missing modality) must not train the projector.
  return task._replace(example_mask=lambda batch: batch["has_caption"])


def build(config: ml_collections.ConfigDict, *, progress: bool = True,
          pretrained: tuple | None = None,
          examples: tuple[world.Scenes, np.ndarray] | None = None) -> Setup:
  """The Fed-MA :class:`Setup` of a config.

  Args:
    config: a Fed-MA config (``configs/fedma.py``).
    progress: progress bars while pretraining towers.
    pretrained: :func:`build_towers`'s result, to reuse (else built/loaded).
    examples: :func:`client_examples`'s result, to reuse (else computed).
  """
  start = time.perf_counter()
  vcfg, vit_params, lcfg, lm_params = pretrained or build_towers(config, progress=progress)
  towers_s = time.perf_counter() - start
  scenes, vis = examples or client_examples(config, vcfg, vit_params)
  train, test, info = client_data(config, scenes, vis)
  info.update({"towers_seconds": towers_s,
               "data_seconds": time.perf_counter() - start - towers_s,
               "vision": dataclasses.asdict(vcfg), "lm": dataclasses.asdict(lcfg)})
  return Setup(train=train, test=test, task=make_task(config, vcfg, lcfg, lm_params), info=info)
