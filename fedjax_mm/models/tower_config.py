"""Frozen towers' configs and their build cache, keyed by a config hash.

Holds :class:`VisionConfig` and :class:`LMConfig` (sizes and pretraining
recipe; ``module()`` builds the Flax module), :func:`config_hash`, the on-disk
cache :func:`cached_params` and the restore targets ``abstract_*_params``.
:func:`cached_params` keys a build by a hash of its config and stores it with
:class:`fedjax_mm.checkpoint.Checkpointer`; a hit loads without building.
Configs must therefore name everything the result depends on, data included
(``data_tag``). A build rounds differently on different CPUs, so the towers of
the project's configs are shipped instead (:mod:`fedjax_mm.models.tower_artifacts`);
this cache holds the builds of other configs. The pretraining itself is
:mod:`fedjax_mm.models.towers`.

References:
  Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (ViT).
  Radford et al., "Language Models are Unsupervised Multitask Learners", 2019.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fedjax_mm.checkpoint import Checkpointer
from fedjax_mm.models.language import CausalLM
from fedjax_mm.models.vision import IMAGE_SIZE, ViT
from fedjax_mm.types import PyTree


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """ViT size and pretraining recipe. ``data_tag`` identifies the data."""

  patch_size: int = 8
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  stem: str = "conv"
  steps: int = 1000
  batch_size: int = 64
  learning_rate: float = 1e-3
  holdout_fraction: float = 0.1
  seed: int = 0
  data_tag: str = ""

  def module(self) -> ViT:
    return ViT(self.patch_size, self.width, self.depth, self.num_heads, self.mlp_dim,
               self.stem)


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """LM size and pretraining recipe. ``data_tag`` identifies the data.

  ``random_offset``: start each training sequence at a random position so
  every learned position is trained (prefix + caption sequences are longer
  than most pretraining pairs).
  """

  vocab_size: int = 100
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  max_len: int = 64
  steps: int = 2000
  batch_size: int = 32
  learning_rate: float = 3e-3
  holdout_fraction: float = 0.05
  random_offset: bool = True
  seed: int = 0
  data_tag: str = ""

  def module(self) -> CausalLM:
    return CausalLM(self.vocab_size, self.width, self.depth, self.num_heads,
                    self.mlp_dim, self.max_len)


def config_hash(config: Any) -> str:
  """Stable 16-hex-digit hash of a config dict or dataclass (JSON, sorted keys)."""
  if dataclasses.is_dataclass(config):
    config = dataclasses.asdict(config)
  text = json.dumps(config, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_params(cache_dir: str | os.PathLike, name: str, config: Any,
                  build_fn: Callable[[], PyTree], abstract_params: PyTree) -> PyTree:
  """Loads ``<cache_dir>/<name>-<config_hash>`` or builds and saves it.

  Args:
    cache_dir: cache root (created if missing).
    name: e.g. ``'vit'`` or ``'lm'``.
    config: dict or dataclass naming everything the params depend on.
    build_fn: ``() -> params``, called only on a miss.
    abstract_params: restore target (e.g. ``jax.eval_shape`` of an init).

  Returns:
    The params (bit-identical to what ``build_fn`` returned when saved).
  """
  directory = os.path.join(os.fspath(cache_dir), f"{name}-{config_hash(config)}")
  with Checkpointer(directory, max_to_keep=1, async_save=False) as ckpt:
    if ckpt.latest_step() is not None:
      params, _ = ckpt.restore(None, abstract_params)
      return params
    params = build_fn()
    meta = {"name": name, "config": dataclasses.asdict(config)
            if dataclasses.is_dataclass(config) else dict(config)}
    ckpt.save(0, params, json.loads(json.dumps(meta, default=str)), force=True)
  return params


def abstract_vit_params(config: VisionConfig) -> PyTree:
  """Shapes/dtypes of the ViT params (restore target)."""
  images = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda k, x: config.module().init(k, x)["params"], jax.random.key(0),
                        images)


def abstract_lm_params(config: LMConfig) -> PyTree:
  """Shapes/dtypes of the LM params (restore target)."""
  tokens = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  return jax.eval_shape(lambda k, x: config.module().init(k, x)["params"], jax.random.key(0),
                        tokens)
