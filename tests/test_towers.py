"""Tests of tower pretraining and its on-disk cache."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm.models import towers
from fedjax_mm.models.language import BOS, EOS, SEP


def test_config_hash_is_stable_and_sensitive():
  a = {"width": 64, "depth": 2, "lr": 1e-3}
  assert towers.config_hash(a) == towers.config_hash({"lr": 1e-3, "depth": 2, "width": 64})
  assert towers.config_hash(a) != towers.config_hash(dict(a, width=65))
  cfg = towers.LMConfig(vocab_size=30)
  assert towers.config_hash(cfg) == towers.config_hash(dataclasses.asdict(cfg))
  assert towers.config_hash(cfg) != towers.config_hash(dataclasses.replace(cfg, seed=1))
  assert len(towers.config_hash(cfg)) == 16


def test_cached_params_round_trip(tmp_path):
  calls = []

  def build(seed):
    def fn():
      calls.append(seed)
      k1, k2 = jax.random.split(jax.random.key(seed))
      return {"w": jax.random.normal(k1, (3, 5)), "b": {"x": jax.random.normal(k2, (7,))},
              "i": jnp.arange(4, dtype=jnp.int32)}
    return fn

  config = {"seed": 0, "size": 3}
  abstract = jax.eval_shape(build(0))
  calls.clear()  # eval_shape traced the builder once
  first = towers.cached_params(tmp_path, "toy", config, build(0), abstract)
  second = towers.cached_params(tmp_path, "toy", config, build(0), abstract)
  assert calls == [0]  # the hit did not build
  for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit
  other = towers.cached_params(tmp_path, "toy", dict(config, seed=1), build(1), abstract)
  assert calls == [0, 1]  # a changed config misses
  assert not np.array_equal(np.asarray(other["w"]), np.asarray(first["w"]))
  assert len(list(tmp_path.iterdir())) == 2


def _toy_pairs(n: int, rng: np.random.Generator, vocab: int = 16) -> np.ndarray:
  """``BOS a1..a3 SEP b1..b3 EOS`` where b is a fixed map of a (a "paraphrase")."""
  a = rng.integers(5, vocab, (n, 3))
  b = (a - 5 + 3) % (vocab - 5) + 5
  return np.concatenate([np.full((n, 1), BOS), a, np.full((n, 1), SEP), b[:, ::-1],
                         np.full((n, 1), EOS), np.zeros((n, 2), int)], 1).astype(np.int32)


def test_pretrain_lm_lowers_loss():
  pairs = _toy_pairs(2000, np.random.default_rng(0))
  cfg = towers.LMConfig(vocab_size=16, width=32, depth=2, num_heads=2, mlp_dim=64,
                        max_len=16, steps=150, batch_size=32, learning_rate=3e-3)
  model = cfg.module()
  init = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]
  before = towers.lm_metrics(model, init, pairs[:500])
  params = towers.pretrain_lm(pairs, cfg, progress=False)
  after = towers.lm_metrics(model, params, pairs[:500])
  assert before["loss_all"] > 2.0  # about log(16)
  assert after["loss_all"] < before["loss_all"] - 0.8
  # The second half is a function of the first: the LM learns to use context.
  assert after["loss_after_sep"] < after["loss_all"] - 0.3
  with pytest.raises(ValueError):
    towers.pretrain_lm(np.zeros((4, 40), np.int32), cfg, progress=False)  # > max_len


def test_pretrain_vision_learns_attributes():
  rng = np.random.default_rng(0)
  n = 600
  color = rng.integers(0, 3, n)
  side = rng.integers(0, 2, n)  # which half of the image is lit
  images = np.zeros((n, 32, 32, 3), np.uint8)
  for i in range(n):
    images[i, :, 16 * side[i]:16 * side[i] + 16, color[i]] = 200
  labels = {"color": color, "side": side, "missing": np.where(side == 1, color, -1)}
  cfg = towers.VisionConfig(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                            steps=100, batch_size=32, learning_rate=3e-3)
  model, params = towers.pretrain_vision_classifier(images, labels, cfg, progress=False)
  acc = towers.vision_accuracy(model, params, images, labels)
  assert acc["color"] > 0.9 and acc["side"] > 0.9 and acc["missing"] > 0.9, acc
  # pretrain_vision returns params["encoder"]: the frozen tower's restore target.
  shapes = jax.tree.map(lambda x: (x.shape, x.dtype), towers.abstract_vit_params(cfg))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), params["encoder"]) == shapes
