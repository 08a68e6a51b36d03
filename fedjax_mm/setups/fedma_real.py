"""Fed-MA with real towers and real data (LLaVA stage-1 across silos).

Frozen EfficientNet-Lite0 (ImageNet) features, computed once and cached,
pooled to a few visual tokens -> a trainable ``mlp2x_gelu`` projector
(1280 -> 576 -> 576) -> frozen SmolLM2-135M-Instruct, trained on the caption
tokens. Clients hold Fashion-MNIST rows (template captions over the class
names; a Dirichlet mixture over classes) and Tux Paint stamps (hand-written
captions; a Dirichlet mixture over stamp categories). The clients' own
held-out Fashion-MNIST rows are the test set: the loss of each row's
canonical class caption ("A photo of a bag."), and zero-shot classification
by caption likelihood over the ten canonical class captions (chance 0.10). Held-out stamps (their own test split) are scored separately
(:func:`stamp_test`).

The LM reads ``[bos] + projector(vis) + embed(prompt) + caption``; the prompt
(``config.model.prompt``, default a newline) plays the part of SEP in the
synthetic world's layout (:class:`fedjax_mm.models.mllm.TokenLayout`).

References:
  Liu et al., "Visual Instruction Tuning" (LLaVA), NeurIPS 2023. Tan & Le,
  "EfficientNet", ICML 2019. Allal et al., "SmolLM2", arXiv:2502.02737,
  2025. Xiao et al., "Fashion-MNIST", arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_mm.data import federated, partition, real_sources
from fedjax_mm.data.feature_norm import FeatureNorm
from fedjax_mm.models import mllm
from fedjax_mm.real import assets, efficientnet
from fedjax_mm.setups import Setup
# The towers and their text side live in real_towers.py; re-exported: part of this API.
from fedjax_mm.setups.real_towers import (LM_DTYPES, Towers, build_towers, generate_captions,
                                          layout, tokenize, with_lm_dtype)
from fedjax_mm.types import Task

__all__ = ["FEATURE_DTYPES", "FEATURE_NORMS", "IMAGE_SIZES", "LM_DTYPES", "LM_LAYERS", "Towers",
           "VISION_TOKENS", "build", "build_towers", "cached_array", "data_dir", "encoded",
           "feature_norm", "generate_captions", "layout", "make_task", "stamp_test", "tokenize",
           "with_lm_dtype", "zero_shot_probes"]

FEATURE_DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}
FEATURE_NORMS = ("standardize", "none")  # see data.feature_norm.FeatureNorm
# Seed offsets: disjoint draws from one config seed.
_LABELLED_SPLIT, _CAPTIONED_SPLIT = 22, 33
# Stored image side per local source (Fashion-MNIST is 28x28 natively; the
# stamps builder stores 64x64). The vision tower resizes to 224 either way.
# The 7x7 map average-pooled to g x g tokens (efficientnet.encode's grids).
VISION_TOKENS = (1, 4, 9, 16, 25, 36, 49)
LM_LAYERS = 30                          # SmolLM2-135M
IMAGE_SIZES = {"fashion_mnist_captions": 28, "fashion_mnist": 28, "tux_paint_stamps": 64}


def data_dir(config: ml_collections.ConfigDict) -> Path:
  return Path(config.data.data_dir) if config.data.data_dir else assets.cache_dir() / "tfds"


def cached_array(directory: Path, key: dict[str, Any], compute: Callable[[], np.ndarray]
                 ) -> np.ndarray:
  """``compute()`` saved once under ``directory/<hash of key>.npy`` (atomic write)."""
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  path = directory / f"{key.get('name', 'array')}-{digest}.npy"
  if path.exists():
    return np.load(path)
  value = np.asarray(compute())
  directory.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
  np.save(tmp, value)
  os.replace(tmp, path)
  return value


def zero_shot_probes(towers: Towers, labels: np.ndarray, class_names: Sequence[str],
                     max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """Each row's ten class captions, its own class first: ``[N, C, L]``, ``[N, C]``.

  Every candidate uses the first template ("A photo of a sneaker."), so the
  candidates differ only in the class noun; ``probe_attr`` is -1 for the true
  caption and 0 ("class") for the others, as :func:`mllm.alignment_metrics`
  expects.
  """
  c = len(class_names)
  names = real_sources.template_captions(range(c), class_names,
                                         real_sources.FASHION_TEMPLATES, np.zeros(c, int))
  table = tokenize(towers, names, max_tokens)                          # [C, L]
  # Row y: y first, then the other classes in order.
  order = np.array([[y] + [k for k in range(c) if k != y] for y in range(c)])
  probes = table[order[labels]]
  attr = np.zeros((len(labels), c), np.int32)
  attr[:, 0] = -1
  return probes, attr


def _class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  name = config.data.labelled
  if name in ("fashion_mnist_captions", "fashion_mnist"):
    return real_sources.FASHION_CLASSES
  raise ValueError(f"config.data.labelled: zero-shot classes are known for "
                   f"('fashion_mnist_captions', 'fashion_mnist'), got {name!r}")


def encoded(config: ml_collections.ConfigDict, towers: Towers, name: str, split: str,
            limit: int | None) -> dict[str, np.ndarray]:
  """Captions, labels and cached vision features of one source split.

  Features are computed once per (source, split, rows, tokens) and cached as
  ``.npy`` under ``$FEDJAX_MM_CACHE/real/features``; a later run (another
  algorithm, another partition) reads them back instead of running the tower.
  """
  source = {config.data.labelled: config.data.labelled_source,
            config.data.captioned: config.data.captioned_source}.get(name) or None
  pairs = real_sources.load_pairs(name, split, data_dir(config), image_size=IMAGE_SIZES.get(
      name, 64), limit=limit, seed=config.seed, source_dir=source)
  key = {"name": f"{name.replace('/', '_')}-{split}", "rows": len(pairs["label"]),
         "tokens": config.model.vision_tokens, "seed": config.seed,
         "images": hashlib.sha256(pairs["image"].tobytes()).hexdigest()}
  vis = cached_array(assets.cache_dir() / "features", key, lambda: efficientnet.encode(
      towers.vision, pairs["image"], pool_to=config.model.vision_tokens, batch_size=64))
  return dict(pairs, vis=vis.astype(FEATURE_DTYPES[config.data.feature_dtype]))


def _client_ids(config: ml_collections.ConfigDict, concepts: np.ndarray, seed: int
                ) -> np.ndarray:
  p = config.data.partition
  spec = {"kind": p.kind, **({"alpha": p.alpha} if p.kind == "dirichlet" else {})}
  return partition.partition(spec, num_clients=config.data.num_clients, concepts=concepts,
                             seed=seed).client_ids


def _held_out(client_ids: np.ndarray, fraction: float, num_clients: int) -> np.ndarray:
  """Rows each client holds out: the last ``floor(fraction * n)`` of its rows
  (at least one when it has two or more), in row order."""
  test = np.zeros(client_ids.shape, bool)
  for k in range(num_clients):
    rows = np.flatnonzero(client_ids == k)
    n_test = min(max(int(fraction * rows.size), int(rows.size >= 2)), max(rows.size - 1, 0))
    test[rows[rows.size - n_test:]] = True
  return test


class _Rows(NamedTuple):
  """The clients' rows of both sources, before packing."""
  labelled: dict[str, np.ndarray]
  label_ids: np.ndarray                 # owner of each labelled row (-1: none)
  held: np.ndarray                      # labelled rows held out for evaluation
  train_vis: np.ndarray                 # [n, N, Dv]: the training rows' features
  train_captions: np.ndarray
  train_owners: np.ndarray


def _rows(config: ml_collections.ConfigDict, towers: Towers) -> _Rows:
  """Both sources' rows, their owners and the held-out labelled rows (deterministic)."""
  d = config.data
  labelled = encoded(config, towers, d.labelled, "train", d.labelled_examples or None)
  label_ids = _client_ids(config, labelled["label"], config.seed + _LABELLED_SPLIT)
  held = _held_out(label_ids, d.test_fraction, d.num_clients) & (label_ids >= 0)
  vis, captions, owners = [labelled["vis"][~held]], [labelled["caption"][~held]], [
      label_ids[~held]]
  if d.captioned:
    captioned = encoded(config, towers, d.captioned, "train", None)
    vis.append(captioned["vis"])
    captions.append(captioned["caption"])
    owners.append(_client_ids(config, np.maximum(captioned["label"], 0),
                              config.seed + _CAPTIONED_SPLIT))
  return _Rows(labelled, label_ids, held, np.concatenate(vis), np.concatenate(captions),
               np.concatenate(owners))


def _fit_norm(config: ml_collections.ConfigDict, train_vis: np.ndarray) -> FeatureNorm | None:
  return None if config.model.feature_norm == "none" else FeatureNorm.fit(train_vis)


def feature_norm(config: ml_collections.ConfigDict, towers: Towers) -> FeatureNorm | None:
  """The config's feature standardization (``None`` when ``model.feature_norm='none'``),
  fitted on the clients' training rows as :func:`build` does."""
  return _fit_norm(config, _rows(config, towers).train_vis)


def build(config: ml_collections.ConfigDict, *, progress: bool = True,
          towers: Towers | None = None) -> Setup:
  """The real Fed-MA :class:`Setup` of a config (``configs/fedma_real.py``)."""
  del progress  # the towers are loaded, not trained
  start = time.perf_counter()
  towers = towers or build_towers(config)
  towers_s = time.perf_counter() - start
  max_tokens, k = config.model.max_caption_tokens, config.data.num_clients
  rows = _rows(config, towers)
  norm = _fit_norm(config, rows.train_vis)
  standardize = norm if norm is not None else (lambda vis: vis)
  train_rows = {"vis": standardize(rows.train_vis),
                "tokens": tokenize(towers, rows.train_captions, max_tokens)}
  train_rows["has_caption"] = np.ones(len(train_rows["tokens"]), bool)
  train = partition.pack_assigned(train_rows, rows.train_owners, k)

  held, label_ids = rows.held, rows.label_ids
  probes, probe_attr = zero_shot_probes(towers, rows.labelled["label"][held],
                                        _class_names(config), max_tokens)
  # A held-out row is scored on its class's canonical caption (probe 0, "A
  # photo of a bag."), whatever template its caption was drawn from: the
  # caption loss and the zero-shot ranking then read the same LM pass, and
  # the loss does not depend on which template a row happened to get.
  test = partition.pack_assigned(
      {"vis": standardize(rows.labelled["vis"][held]), "tokens": probes[:, 0],
       "has_caption": np.ones(int(held.sum()), bool), "probes": probes,
       "probe_attr": probe_attr}, label_ids[held], k)
  if 0 < config.data.eval_clients < k:
    ids = np.random.default_rng(config.seed + 1).choice(k, config.data.eval_clients,
                                                        replace=False)
    test = federated.select_clients(test, np.sort(ids))
  task = make_task(config, towers)
  labelled_train = int((~held & (label_ids >= 0)).sum())
  info = {"towers_seconds": towers_s, "data_seconds": time.perf_counter() - start - towers_s,
          "client_examples": int(train.num_examples + test.num_examples),
          "clients_with_data": int(np.sum(np.asarray(train.sizes) > 0)),
          "train_rows": {"labelled": labelled_train,
                         "captioned": int(train.num_examples) - labelled_train},
          "test_rows": int(test.num_examples), "lm_layers": towers.lm.config.num_layers
          if towers.lm.num_layers is None else towers.lm.num_layers,
          "vision_tokens": config.model.vision_tokens,
          "feature_norm": config.model.feature_norm}
  return Setup(train=train, test=test, task=task, info=info)


def make_task(config: ml_collections.ConfigDict, towers: Towers) -> Task:
  p = config.model.projector
  task = mllm.fedma_task(
      towers.lm, towers.lm_params, vis_dim=efficientnet.FEATURE_DIM,
      num_vis_tokens=config.model.vision_tokens, projector_kind=p.kind,
      hidden_dim=p.hidden_dim or None, objective=config.model.objective,
      layout=layout(config, towers), lm_width=towers.lm.config.width)
  return task._replace(example_mask=lambda batch: batch["has_caption"])


def stamp_test(config: ml_collections.ConfigDict, towers: Towers) -> dict[str, np.ndarray]:
  """The captioned source's own test split as one batch (caption loss, samples).

  Its features are standardized like the training rows (:func:`feature_norm`).
  """
  rows = encoded(config, towers, config.data.captioned, "test", None)
  norm = feature_norm(config, towers)
  return {"vis": norm(rows["vis"]) if norm is not None else rows["vis"],
          "caption": rows["caption"],
          "tokens": tokenize(towers, rows["caption"], config.model.max_caption_tokens),
          "has_caption": np.ones(len(rows["caption"]), bool)}
