"""Tests of tower pretraining, its on-disk cache and the shipped towers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm import config_files
from fedjax_mm.models import tower_artifacts, towers
from fedjax_mm.models.language import BOS, EOS, SEP
from fedjax_mm.setups import fedma


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


# ---- shipped towers (fedjax_mm/assets/towers, scripts/make_towers.py) ----

ROOT = Path(__file__).parents[1]
SHIPPED = tower_artifacts.SHIPPED_DIR
MANIFESTS = sorted(SHIPPED.glob("*.json"))
sys.path.insert(0, str(ROOT / "scripts"))
import make_towers  # noqa: E402


def _smallest(name: str) -> Path:
  return min((m for m in MANIFESTS if m.name.startswith(name + "-")),
             key=lambda m: tower_artifacts.read_manifest(m)["npz_bytes"])


def test_shipped_files_match_their_manifests():
  assert len(MANIFESTS) >= 2, SHIPPED
  for manifest in MANIFESTS:
    meta = json.loads(manifest.read_text())
    npz = SHIPPED / meta["npz"]
    # SHA-256 of the bytes, computed here (not by the code under test).
    assert hashlib.sha256(npz.read_bytes()).hexdigest() == meta["npz_sha256"], npz
    assert meta["npz_bytes"] == npz.stat().st_size
    assert manifest.stem == f"{meta['name']}-{meta['config_hash']}"
    assert towers.config_hash(meta["config"]) == meta["config_hash"]
    assert meta["format_version"] == tower_artifacts.FORMAT_VERSION
    assert meta["cpu_model"] and meta["jax_version"] and meta["created"]
  assert make_towers.check(SHIPPED) == []  # what `make_towers.py --check` prints


def _copy(manifest: Path, dest: Path) -> tuple[Path, Path]:
  meta = tower_artifacts.read_manifest(manifest)
  shutil.copy(manifest, dest / manifest.name)
  shutil.copy(SHIPPED / meta["npz"], dest / meta["npz"])
  return dest / meta["npz"], dest / manifest.name


def _abstract(meta):
  if meta["name"] == "vit":
    return towers.abstract_vit_params(towers.VisionConfig(**meta["config"]))
  return towers.abstract_lm_params(towers.LMConfig(**meta["config"]))


def _config(meta):
  cls = towers.VisionConfig if meta["name"] == "vit" else towers.LMConfig
  return cls(**meta["config"])


def test_tampered_artifacts_are_refused(tmp_path):
  manifest = _smallest("lm")
  meta = tower_artifacts.read_manifest(manifest)
  cfg, abstract = _config(meta), _abstract(meta)
  npz, copy = _copy(manifest, tmp_path)
  assert tower_artifacts.load(tmp_path, "lm", cfg, abstract) is not None  # the intact copy
  data = bytearray(npz.read_bytes())
  data[len(data) // 2] ^= 1  # one bit of one weight
  npz.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=re.escape(str(npz)) + ": SHA-256 must be .*"
                     + re.escape("regenerate with: python scripts/make_towers.py")):
    tower_artifacts.load(tmp_path, "lm", cfg, abstract)
  assert any(p.startswith(f"{npz}: SHA-256 must be") for p in make_towers.check(tmp_path))
  npz.unlink()
  with pytest.raises(ValueError, match="got missing file"):
    tower_artifacts.load(tmp_path, "lm", cfg, abstract)
  # A manifest edited to another format or config is refused too.
  _copy(manifest, tmp_path)
  copy.write_text(json.dumps(dict(meta, format_version=0)))
  with pytest.raises(ValueError, match="format_version must be 1, got 0"):
    tower_artifacts.load(tmp_path, "lm", cfg, abstract)
  copy.write_text(json.dumps(dict(meta, config=dict(meta["config"], steps=1))))
  with pytest.raises(ValueError, match="config must be the one hashed to"):
    tower_artifacts.load(tmp_path, "lm", cfg, abstract)


def test_params_that_do_not_fit_the_module_are_refused(tmp_path):
  cfg = {"kind": "toy"}
  abstract = {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)}
  for params, match in (({"w": np.zeros((3, 2), np.float32)}, r"w must be float32\[2, 3\], got"),
                        ({"w": np.zeros((2, 3), np.float16)}, "w must be float32.*got float16"),
                        ({"v": np.zeros((2, 3), np.float32)}, "1 extra and 1 missing")):
    tower_artifacts.write(tmp_path, "toy", cfg, params, {})
    with pytest.raises(ValueError, match=match):
      tower_artifacts.load(tmp_path, "toy", cfg, abstract)
  # write() leaves exactly the two files (its temporaries are renamed away).
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      p.name for p in tower_artifacts.paths(tmp_path, "toy", cfg))


def test_loaded_params_have_the_module_structure_and_dtypes():
  for manifest in MANIFESTS:
    meta = tower_artifacts.read_manifest(manifest)
    abstract = _abstract(meta)
    params = tower_artifacts.load(SHIPPED, meta["name"], _config(meta), abstract)
    assert (jax.tree.structure(params) == jax.tree.structure(abstract)), manifest
    got = jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), params)
    assert got == jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), abstract), manifest
    assert all(np.dtype(x.dtype) == np.float32 for x in jax.tree.leaves(params))
    # Device arrays, as an orbax restore gives (jit indexes them with tracers).
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))


def _world_presets():
  """Every ``configs/*.py:preset`` of the synthetic world (found here, not by the script)."""
  base = make_towers._module("configs/fedma.py").PRESETS
  for path in sorted((ROOT / "configs").glob("*.py")):
    module = make_towers._module(f"configs/{path.name}")
    if module.get_config().get("data", {}).get("name") != "world":
      continue  # synthetic.py, fedma_real.py: no synthetic towers
    # fedma_demo.py has no PRESETS of its own: it takes fedma.py's.
    for preset in getattr(module, "PRESETS", base):
      yield f"configs/{path.name}:{preset}", module.get_config(preset)


def test_every_config_in_configs_has_shipped_towers():
  presets = list(_world_presets())
  assert len(presets) >= 16  # fedma.py, fedma_demo.py (5 each), scenarios.py (6)
  for name, config in presets:
    for tower, cfg in fedma.tower_configs(config):
      manifest = tower_artifacts.paths(SHIPPED, tower, cfg)[1]
      assert manifest.exists(), (
          f"{name}: its {tower} tower config (hash {towers.config_hash(cfg)}) has no "
          f"shipped artifact; run: PYTHONPATH=. python scripts/make_towers.py")


def test_shipped_tower_wins_over_the_cache_and_is_not_built(tmp_path, caplog):
  cfg, params = {"kind": "toy"}, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  tower_artifacts.write(tmp_path / "shipped", "toy", cfg, params, {})

  def build():
    raise AssertionError("a shipped tower must not be built")

  with caplog.at_level(logging.INFO):
    got = tower_artifacts.load_or_build("toy", cfg, build, jax.eval_shape(lambda: params),
                                        cache_dir=tmp_path / "cache",
                                        shipped_dir=tmp_path / "shipped")
  np.testing.assert_array_equal(got["w"], params["w"])
  assert "no shipped" not in caplog.text and not (tmp_path / "cache").exists()


def test_an_unshipped_tower_is_pretrained_cached_and_logged(tmp_path, caplog):
  cfg = towers.LMConfig(vocab_size=16, width=8, depth=1, num_heads=1, mlp_dim=8, max_len=16,
                        steps=2, batch_size=8)
  calls = []

  def build():
    calls.append(1)
    return towers.pretrain_lm(_toy_pairs(32, np.random.default_rng(0)), cfg, progress=False)

  abstract = towers.abstract_lm_params(cfg)
  for _ in range(2):
    with caplog.at_level(logging.WARNING):
      params = tower_artifacts.load_or_build("lm", cfg, build, abstract, cache_dir=tmp_path,
                                             shipped_dir=SHIPPED)
  assert calls == [1]  # pretrained once, then loaded from the local cache
  assert (tmp_path / f"lm-{towers.config_hash(cfg)}").is_dir()
  message = f"no shipped lm tower for this config (hash {towers.config_hash(cfg)}): pretraining"
  assert caplog.text.count(message) == 2  # said on every load: it is machine-dependent
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, abstract)


def test_build_towers_of_an_unshipped_config_goes_to_the_cache(tmp_path, monkeypatch):
  config = config_files.load(ROOT / "configs/fedma.py:iid")
  config.model.vision.steps = 7  # a hash no artifact has
  config.model.cache_dir = str(tmp_path)
  seen = []
  monkeypatch.setattr(towers, "cached_params",
                      lambda cache, name, cfg, build, abstract: seen.append((cache, name, cfg)))
  vcfg, _, lcfg, lm = fedma.build_towers(config, progress=False)
  # The ViT misses (its steps changed); the LM's config is unchanged: shipped.
  assert seen == [(str(tmp_path), "vit", vcfg)]
  assert lm is not None and towers.config_hash(lcfg) in {
      tower_artifacts.read_manifest(m)["config_hash"] for m in MANIFESTS}


def test_shipped_towers_reproduce_their_recorded_values():
  # The towers every config in configs/ uses (the tests' tiny ones record
  # values too; checking them would only double this test's compile time).
  for name, tower_config in fedma.tower_configs(make_towers.shipped_config("configs")):
    meta = tower_artifacts.read_manifest(tower_artifacts.paths(SHIPPED, name, tower_config)[1])
    cfg, ref = _config(meta), meta["reference"]
    assert cfg == tower_config
    params = tower_artifacts.load(SHIPPED, meta["name"], cfg, _abstract(meta))
    # Tolerance: on another CPU only the float32 reduction order may differ.
    # Reordering a length-n float32 sum moves it by at most (n-1) eps sum|x_i|
    # (Higham, Accuracy and Stability of Numerical Algorithms, ch. 4), n <= 256
    # here: 256 x 1.2e-7 = 3e-5 relative per matmul, ~13 matmuls in sequence
    # (2 blocks of q/k/v, scores, mix, out, 2 MLP, plus the head) -> 4e-4 to
    # first order (a few ulp from other exp/tanh codegen are far below that);
    # a wrong or perturbed weight moves these by far more.
    if meta["name"] == "lm":
      seq = np.asarray(ref["sequences"], np.int32)
      got = towers.lm_metrics(cfg.module(), params, seq)
      np.testing.assert_allclose(got["loss_all"], ref["loss_all"], rtol=5e-4)
      np.testing.assert_allclose(got["loss_after_sep"], ref["loss_after_sep"], rtol=5e-4)
    else:
      images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
      apply = jax.jit(cfg.module().apply)
      feats = np.asarray(apply({"params": params}, images.astype(np.float32) / np.float32(255)))
      scale = ref["features_mean_abs"]
      np.testing.assert_allclose(np.mean(np.abs(feats)), scale, rtol=5e-4)
      np.testing.assert_allclose(feats[:, :4, :4], np.asarray(ref["features_head"]),
                                 rtol=5e-4, atol=5e-4 * scale)


def test_make_towers_check_reports_missing_unshipped_and_left_over(monkeypatch):
  # Without its "configs" entry, every preset of configs/ misses its towers and
  # the two shipped files of that entry are left over.
  monkeypatch.setattr(make_towers, "SHIPPED",
                      {k: v for k, v in make_towers.SHIPPED.items() if k != "configs"})
  problems = make_towers.check(SHIPPED)
  assert any(p.startswith("configs/scenarios.py:one_pass: its vit tower") and
             p.endswith("is not shipped") for p in problems), problems
  assert sum(p.endswith("left over (no entry of SHIPPED builds it)") for p in problems) == 2


def test_make_towers_refuses_an_unknown_entry(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["make_towers.py", "--only", "configs,nope"])
  with pytest.raises(SystemExit) as exit_info:
    make_towers.main()
  assert exit_info.value.code == 2
  assert "--only: 'nope' is not one of ('configs', 'test_fedma')" in capsys.readouterr().err
