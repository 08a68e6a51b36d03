"""Central pretraining of the frozen towers.

The vision encoder is pretrained on images only (multi-head attribute
classification), the LM on caption text only (next-token prediction on
``BOS a1..am SEP b1..bk EOS PAD..`` pairs of paraphrases of one scene, so
that it learns to use context: an LM trained on isolated captions cannot be
steered by a visual prefix, see NOTES.md). Neither ever sees the pairing.

Both loops run ``chunk`` optimizer steps per compiled ``lax.scan`` call
(sampling batches on device), behind a tqdm bar. The configs and the build
cache (:func:`cached_params`, keyed by a hash of the config) are in
:mod:`fedjax_mm.models.tower_config` and re-exported here.

References:
  Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (ViT).
  Radford et al., "Language Models are Unsupervised Multitask Learners", 2019.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from fedjax_mm.models.language import PAD, SEP, CausalLM
from fedjax_mm.models.tower_config import (  # noqa: F401  (re-exported: the old import path)
    LMConfig, VisionConfig, abstract_lm_params, abstract_vit_params, cached_params, config_hash)
from fedjax_mm.models.vision import IMAGE_SIZE, ViTClassifier
from fedjax_mm.types import PyTree

_CHUNK = 50  # optimizer steps per compiled call (and per progress-bar update)


def _split(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng(seed).permutation(n)
  n_hold = int(round(n * holdout_fraction))
  return perm[n_hold:], perm[:n_hold]


def _train(loss_fn: Callable, params: PyTree, data: Mapping[str, jax.Array], *,
           steps: int, batch_size: int, learning_rate: float, key: jax.Array,
           desc: str, progress: bool) -> PyTree:
  """Adam (warmup + cosine, clipped) on ``loss_fn(params, batch, key)``."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, max(steps // 20, 1), max(steps, 2), learning_rate * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
  n = next(iter(data.values())).shape[0]
  chunk = math.gcd(steps, _CHUNK)

  @jax.jit
  def run_chunk(params, opt_state, data, start):
    def step(carry, i):
      params, opt_state = carry
      k_idx, k_loss = jax.random.split(jax.random.fold_in(key, i))
      idx = jax.random.randint(k_idx, (batch_size,), 0, n)
      batch = jax.tree.map(lambda a: a[idx], data)
      loss, grads = jax.value_and_grad(loss_fn)(params, batch, k_loss)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               start + jnp.arange(chunk))
    return params, opt_state, losses.mean()

  opt_state = tx.init(params)
  with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
    for start in range(0, steps, chunk):
      params, opt_state, loss = run_chunk(params, opt_state, data, start)
      bar.update(chunk)
      bar.set_postfix(loss=f"{float(loss):.3f}")
  return params


def _vision_loss(model: ViTClassifier, names: tuple[str, ...]):
  def loss_fn(params, batch, key):
    del key
    logits = model.apply({"params": params}, batch["images"].astype(jnp.float32) / 255.0)
    total = 0.0
    for name in names:  # Labels < 0 mean "not applicable" and are skipped.
      y = batch[name]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits[name], jnp.maximum(y, 0))
      total += jnp.sum(ce * (y >= 0)) / jnp.maximum(jnp.sum(y >= 0), 1)
    return total
  return loss_fn


def pretrain_vision(images: np.ndarray, labels: Mapping[str, np.ndarray],
                    config: VisionConfig = VisionConfig(), *, progress: bool = True) -> PyTree:
  """Pretrains the ViT by attribute classification; returns the encoder params.

  Args:
    images: uint8 ``[N, 32, 32, 3]``.
    labels: attribute name -> int ``[N]`` class ids (< 0: not applicable);
      the number of classes is ``max + 1`` over all N.
    config: sizes and recipe; ``holdout_fraction`` of the images is held out
      for the reported accuracies.
    progress: show a progress bar and report per-attribute accuracies.

  Returns:
    ``vit_params`` for ``config.module()`` (the heads are dropped).
  """
  return pretrain_vision_classifier(images, labels, config, progress=progress)[1]["encoder"]


def pretrain_vision_classifier(images: np.ndarray, labels: Mapping[str, np.ndarray],
                               config: VisionConfig, *, progress: bool = True
                               ) -> tuple[ViTClassifier, PyTree]:
  """As :func:`pretrain_vision`, but returns the classifier and all its params."""
  names = tuple(sorted(labels))
  num_classes = tuple((k, int(np.max(labels[k])) + 1) for k in names)
  model = ViTClassifier(config.module(), num_classes)
  train, held = _split(len(images), config.holdout_fraction, config.seed)
  data = {"images": jnp.asarray(images[train]),
          **{k: jnp.asarray(labels[k][train], jnp.int32) for k in names}}
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  # jit: run eagerly, init compiles each initializer op by op (~14 s of a tiny ViT's).
  params = jax.jit(model.init)(key_init, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))["params"]
  params = _train(_vision_loss(model, names), params, data, steps=config.steps,
                  batch_size=config.batch_size, learning_rate=config.learning_rate,
                  key=key_train, desc="pretrain vision", progress=progress)
  if progress:
    # Train accuracy on as many rows as are held out (a cheap overfitting check).
    report = {split: vision_accuracy(model, params, images[rows], {k: labels[k][rows] for k in names})
              for split, rows in (("train", train[:len(held) or None]), ("held-out", held))}
    _log("vision", report)
  return model, params


def vision_accuracy(model: ViTClassifier, params: PyTree, images: np.ndarray,
                    labels: Mapping[str, np.ndarray], batch_size: int = 512) -> dict[str, float]:
  """Per-attribute accuracy of a :class:`ViTClassifier` (labels < 0 skipped)."""
  predict = jax.jit(lambda p, x: {k: jnp.argmax(v, -1) for k, v in model.apply(
      {"params": p}, x.astype(jnp.float32) / 255.0).items()})
  batch_size = max(min(batch_size, len(images)), 1)
  preds = {k: [] for k in labels}
  for i in range(0, len(images), batch_size):
    batch = images[i:i + batch_size]
    # The last batch padded to the others' shape: one compilation, not two.
    padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:],
                                             batch.dtype)])
    out = predict(params, jnp.asarray(padded))
    for k in labels:
      preds[k].append(np.asarray(out[k])[:len(batch)])
  return {k: float(np.mean((np.concatenate(preds[k]) == labels[k])[labels[k] >= 0]))
          for k in labels if len(images)}


def _lm_loss(model: CausalLM, random_offset: bool):
  def loss_fn(params, batch, key):
    seq = batch["seq"]
    inputs, targets = seq[:, :-1], seq[:, 1:]
    offset = 0
    if random_offset:
      offset = jax.random.randint(key, (seq.shape[0],), 0, model.max_len - inputs.shape[1] + 1)
    logits = model.apply({"params": params}, inputs, offset)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = targets != PAD
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)
  return loss_fn


def pretrain_lm(sequences: np.ndarray, config: LMConfig, *, progress: bool = True) -> PyTree:
  """Pretrains the causal LM by next-token prediction on paraphrase pairs.

  Args:
    sequences: int32 ``[N, T]`` ``BOS a1..am SEP b1..bk EOS PAD..``;
      ``T - 1 <= config.max_len``.
    config: sizes and recipe.
    progress: show a progress bar and log held-out loss/accuracy.

  Returns:
    ``lm_params`` for ``config.module()``.
  """
  if sequences.shape[1] - 1 > config.max_len:
    raise ValueError(f"sequences of length {sequences.shape[1]} exceed max_len {config.max_len}")
  model = config.module()
  train, held = _split(len(sequences), config.holdout_fraction, config.seed)
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  params = jax.jit(model.init)(key_init, jnp.zeros((1, 2), jnp.int32))["params"]
  params = _train(_lm_loss(model, config.random_offset), params,
                  {"seq": jnp.asarray(sequences[train], jnp.int32)}, steps=config.steps,
                  batch_size=config.batch_size, learning_rate=config.learning_rate,
                  key=key_train, desc="pretrain LM", progress=progress)
  if progress and len(held):
    _log("LM", {"held-out": lm_metrics(model, params, sequences[held])})
  return params


def lm_metrics(model: CausalLM, params: PyTree, sequences: np.ndarray) -> dict[str, float]:
  """Next-token loss/accuracy on non-PAD targets, overall and after SEP."""
  @jax.jit  # one program (run eagerly, each op below would compile on its own)
  def metrics(params, seq):
    logits = model.apply({"params": params}, seq[:, :-1])
    targets = seq[:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets)
    valid = targets != PAD
    # Targets after SEP (the second paraphrase): low loss there means the LM
    # uses the first caption as context, which is what a visual prefix exploits.
    after_sep = valid & (jnp.cumsum(seq[:, :-1] == SEP, axis=1) > 0)
    out = {}
    for name, m in (("all", valid), ("after_sep", after_sep)):
      out[f"loss_{name}"] = jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1)
      out[f"acc_{name}"] = jnp.sum(correct * m) / jnp.maximum(jnp.sum(m), 1)
    return out
  return {k: float(v) for k, v in metrics(params, jnp.asarray(sequences, jnp.int32)).items()}


def _log(tower: str, report: Mapping[str, Mapping[str, float]]) -> None:
  for split, values in report.items():
    line = ", ".join(f"{k}={v:.3f}" for k, v in values.items())
    tqdm.write(f"[{tower} pretraining] {split}: {line}")
    logging.info("%s pretraining %s: %s", tower, split, line)
