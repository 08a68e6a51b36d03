"""Fed-MA on real towers (fedjax_mm.setups.fedma_real) with tiny fixture data.

EfficientNet-Lite0 features -> trainable projector -> SmolLM2-135M truncated to
two layers, on ~60 Fashion-MNIST-format rows (IDX files written here, three
classes) and the three fixture Tux Paint stamps. Tested: a short federated run
lowers the held-out caption loss below the untrained projector's floor; the
zero-shot probes (order, text, attributes) and the accuracy the metric
machinery computes from them; caption tokenization; the per-client held-out
split; greedy captioning; the feature standardization (against NumPy); the
feature cache; every config guard of ``_validate_real``; bf16 towers against
float32.

Needs the fetched weights (``scripts/fetch_real.sh``); the tests that load the
towers skip, saying so, when they are missing. Nothing reads /usr/share or the
network: sources, TFDS data and the feature cache all live under tmp dirs.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("PIL.Image")
pytest.importorskip("tokenizers")

import real_fixtures  # noqa: E402  (tests/ is on sys.path under pytest)
from fedjax_mm import config_files, configuration, evaluation  # noqa: E402
from fedjax_mm import setups  # noqa: E402
from fedjax_mm.simulation import validation  # noqa: E402
from fedjax_mm.data.feature_norm import FeatureNorm  # noqa: E402
from fedjax_mm.models import mllm  # noqa: E402
from fedjax_mm.models.projector import Projector  # noqa: E402
from fedjax_mm.real import assets, efficientnet, smollm  # noqa: E402
from fedjax_mm.setups import fedma_real  # noqa: E402
from fedjax_mm.simulation import driver  # noqa: E402
from fedjax_mm.simulation import round as round_lib  # noqa: E402
from fedjax_mm.types import initial_trainable  # noqa: E402

ROOT = Path(__file__).parents[1]
NUM_CLIENTS = 6
LABELLED_ROWS = 60
# T-shirt/top, Bag, Ankle boot: "a T-shirt", "a bag", "an ankle boot". With
# the untrained projector the LM ranks "A photo of a bag." (a short caption)
# first whatever the image, so the floor gets the bag rows right and the
# others wrong: an accuracy strictly between 0 and 1 to check.
CLASSES = (0, 8, 9)
# What the ten class captions must read, written out by hand (not derived
# from the code under test), in Fashion-MNIST label order.
CLASS_CAPTIONS = ("A photo of a T-shirt.", "A photo of a pair of trousers.",
                  "A photo of a pullover.", "A photo of a dress.", "A photo of a coat.",
                  "A photo of a sandal.", "A photo of a shirt.", "A photo of a sneaker.",
                  "A photo of a bag.", "A photo of an ankle boot.")


def _fashion_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Noise plus a bright vertical band whose position is the class, so the
  frozen features carry the class (the projector has something to map)."""
  images = rng.integers(0, 80, (len(labels), 28, 28)).astype(np.uint8)
  for i, y in enumerate(labels):
    band = CLASSES.index(int(y)) * 9
    images[i, :, band:band + 10] += 170
  return images


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  rng = np.random.default_rng(0)
  train = np.resize(np.array(CLASSES), LABELLED_ROWS)
  test = np.array(CLASSES)  # the builder needs a t10k split; fedma_real never reads it
  fashion = real_fixtures.write_fashion(
      tmp_path_factory.mktemp("fashion"),
      {"train": (_fashion_images(train, rng), train), "t10k": (_fashion_images(test, rng), test)})
  stamps = real_fixtures.write_stamps(tmp_path_factory.mktemp("stamps"))
  return {"fashion": fashion, "stamps": stamps, "tfds": tmp_path_factory.mktemp("tfds")}


class _FeatureCacheIn:
  """``fedma_real``'s view of :mod:`fedjax_mm.real.assets` with ``cache_dir()`` moved.

  The feature cache (``cache_dir()/features``) goes to a tmp dir so every run
  computes the fixture's features with the real tower (a warm user cache would
  otherwise hide the tower) and leaves no files behind. ``assets.cache_dir``
  itself cannot be patched: the weights are looked up through it.
  """

  def __init__(self, root: Path):
    self._root = root

  def cache_dir(self) -> Path:
    return self._root

  def __getattr__(self, name):
    return getattr(assets, name)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
  root = tmp_path_factory.mktemp("cache")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(fedma_real, "assets", _FeatureCacheIn(root))
    yield root / "features"


def tiny_config(sources, **model):
  config = config_files.load(ROOT / "configs/fedma_real.py", "cpu")
  config.model.lm_layers = 2          # the first 2 of 30 blocks: seconds, not minutes
  config.model.update(model)
  config.data.num_clients = NUM_CLIENTS
  config.clients_per_round = 3
  config.num_rounds = 4
  config.data.labelled_examples = 0   # all fixture rows
  config.data.test_fraction = 0.1     # one held-out row per client: cheap evaluation
  config.data.data_dir = str(sources["tfds"])
  config.data.labelled_source = str(sources["fashion"])
  config.data.captioned_source = str(sources["stamps"])
  # The unembedding over SmolLM2's 49,152 tokens dominates every step, so few
  # and small batches; a higher client lr makes up for the few steps.
  config.local.num_steps = 2
  config.local.batch_size = 2
  config.client.learning_rate = 1e-2
  config.eval_every = 0
  config.checkpoint.every = 0
  config.checkpoint.async_save = False
  return config


def _weights_or_skip() -> None:
  for name in ("smollm2", "efficientnet_lite0"):
    try:
      assets.path(name)
    except FileNotFoundError as e:
      pytest.skip(f"real weights not fetched (run scripts/fetch_real.sh): {e}")


@pytest.fixture(scope="module")
def towers(sources):
  _weights_or_skip()
  return fedma_real.build_towers(tiny_config(sources))


@pytest.fixture(scope="module")
def built(sources, towers, feature_cache):
  config = tiny_config(sources)
  setup = fedma_real.build(config, towers=towers)
  # One scanned evaluation batch holds every test row (no padded rows to score).
  config.eval_batch_size = int(setup.test.num_examples)
  return config, setup


@pytest.fixture(scope="module")
def floor(built):
  """The untrained projector's evaluation: per-client sums and their summary."""
  config, setup = built
  task = setup.task
  init = initial_trainable(task, config.seed)
  eval_fn = jax.jit(evaluation.build_eval_fn(task, setup.test, config.eval_batch_size))
  sums = jax.device_get(eval_fn(init, jax.device_put(setup.test)))
  return init, sums, evaluation.summarize(sums)


@pytest.fixture(scope="module")
def own_loss(built, floor):
  """Float32 caption NLL of each held-out row's own caption, untrained projector."""
  _, setup = built
  test = jax.tree.map(jnp.asarray, setup.test.examples)
  return np.asarray(jax.jit(setup.task.per_example_loss)(floor[0], setup.task.frozen, test))


# ----------------------------------------------------------------- end to end


def test_build_dispatches_and_reports(built, monkeypatch):
  config, setup = built
  # setups.build routes data.name == "real" here (towers loaded by fedma_real.build).
  calls = []
  monkeypatch.setattr(fedma_real, "build", lambda c, **kw: calls.append((c, kw)) or "setup")
  assert setups.build(config, progress=False) == "setup" and calls[0][0] is config
  info = setup.info
  assert info["lm_layers"] == 2 and info["vision_tokens"] == 1
  assert info["clients_with_data"] == NUM_CLIENTS
  assert info["train_rows"]["captioned"] == 2  # the two train stamps; the third is test
  assert setup.train.examples["vis"].shape[1:] == (1, efficientnet.FEATURE_DIM)


def test_short_federated_run_beats_the_untrained_floor(built, floor, own_loss, tmp_path):
  config, setup = built
  init, _, untrained = floor
  # The floor is measured at the parameters the driver starts from.
  state = round_lib.init_server_state(setup.task, optax.sgd(1.0), config.seed)
  for a, b in zip(jax.tree.leaves(state.trainable), jax.tree.leaves(init)):
    np.testing.assert_array_equal(a, b)
  summary, trained = driver.train_and_evaluate(config, str(tmp_path), progress=False,
                                               setup=setup, return_trainable=True)
  final = summary["final"]
  assert summary["nonfinite_updates_total"] == 0
  # The untrained projector feeds the 2-layer LM off-distribution embeddings
  # (floor: 19.0 nats a token, measured); 4 rounds x 3 clients x 2 Adam steps
  # bring the held-out caption loss to 8.3. A 3-nat margin leaves room for
  # other platforms' numerics and still fails if training does not help.
  assert final["eval_loss"] < untrained["loss"] - 3.0, (untrained, final)
  assert 0.0 <= final["eval_accuracy"] <= 1.0
  # The returned projector is the one the final eval scored: the training loss
  # path (per_example_loss, not the probes' pass) agrees on the held-out rows.
  test = jax.tree.map(jnp.asarray, setup.test.examples)
  after = np.asarray(jax.jit(setup.task.per_example_loss)(trained, setup.task.frozen, test))
  assert after.mean() < own_loss.mean() - 3.0, (own_loss, after)
  assert after.mean() == pytest.approx(final["eval_loss"], rel=1e-4)


def test_other_parts_run_on_the_real_setup_unchanged(built, floor, tmp_path):
  # One run swaps all three parts at once: SCAFFOLD clients (control variates
  # in the population state), Fed-CMP's canonical aggregation and its
  # orthogonality-preserved momentum server. Nothing in the real setup knows.
  config, setup = built
  config = config.copy_and_resolve_references()
  config.num_rounds = 2
  config.algorithm.kind = "scaffold"
  config.client.optimizer, config.client.learning_rate = "sgd", 0.05
  config.aggregation.kind, config.aggregation.canonical.rank = "canonical", 2
  config.server.kind, config.server.opm.momentum = "opm", 0.9
  validation.validate(config)
  summary = driver.train_and_evaluate(config, str(tmp_path), progress=False, setup=setup)
  assert summary["algorithm"] == "scaffold" and summary["aggregator"] == "canonical"
  assert summary["nonfinite_updates_total"] == 0
  # 2 rounds x 3 clients x 2 SGD steps, CRA at rank 2: 19.02 -> 18.12 nats
  # (measured; SGD 0.5 got only to 18.84). It trains, if slowly.
  assert summary["final"]["eval_loss"] < floor[2]["loss"] - 0.5, (floor[2], summary["final"])


# ----------------------------------------------------------------- probes


def test_zero_shot_probes_order_text_and_attributes(towers):
  labels = np.array([7, 0, 9, 1])
  probes, attr = fedma_real.zero_shot_probes(
      towers, labels, fedma_real._class_names(_valid_config()), 24)
  assert probes.shape[:2] == (4, 10) and attr.shape == (4, 10)
  decode = lambda ids: towers.tokenizer.decode([int(t) for t in ids])
  for row, y in zip(probes, labels):
    texts = [decode(p) for p in row]
    assert texts[0] == CLASS_CAPTIONS[y]  # its own class first
    assert sorted(texts) == sorted(CLASS_CAPTIONS)  # every class caption exactly once
    assert texts[1:] == [c for k, c in enumerate(CLASS_CAPTIONS) if k != y]
    for p in row:  # each candidate ends with <|endoftext|>, then only padding
      end = list(p).index(towers.special.endoftext)
      assert set(p[end + 1:].tolist()) <= {towers.special.pad}
  np.testing.assert_array_equal(attr, np.tile([-1] + [0] * 9, (4, 1)))


def test_zero_shot_accuracy_is_the_argmin_of_candidate_nll(built, floor, towers):
  config, setup = built
  init, sums, untrained = floor
  assert 0.0 <= untrained["accuracy"] <= 1.0
  # Score every candidate caption directly: total NLL given the image.
  p = config.model.projector
  model = mllm.MLLM(towers.lm, Projector(kind=p.kind, out_dim=towers.lm.config.width,
                                         hidden_dim=p.hidden_dim or None),
                    fedma_real.layout(config, towers))
  test = jax.tree.map(jnp.asarray, setup.test.examples)
  nll, mask = jax.jit(model.probe_nll)(init["projector"], towers.lm_params, test)
  scores = np.asarray(jnp.sum(nll * mask, -1))
  correct = np.argmin(scores, axis=1) == 0
  assert 0 < correct.sum() < correct.size, "the fixture should give a non-trivial floor"
  owners = np.repeat(np.arange(NUM_CLIENTS), np.asarray(setup.test.sizes))
  np.testing.assert_array_equal(sums["accuracy"],
                                np.bincount(owners, correct, minlength=NUM_CLIENTS))
  assert untrained["accuracy"] == pytest.approx(correct.mean())


def test_eval_loss_is_the_held_out_captions_own_loss(built, floor, own_loss):
  """The reported ``loss`` is the NLL of each held-out row's caption (its canonical
  class caption, which is also probe 0: metrics read the loss off probe 0)."""
  _, setup = built
  sums, own = floor[1], own_loss
  owners = np.repeat(np.arange(NUM_CLIENTS), np.asarray(setup.test.sizes))
  np.testing.assert_allclose(sums["loss"], np.bincount(owners, own, minlength=NUM_CLIENTS),
                             rtol=1e-4)


# ----------------------------------------------------------------- text


def test_tokenize_end_token_padding_truncation_and_round_trip(towers):
  eos, pad = towers.special.endoftext, towers.special.pad
  assert eos != pad
  texts = ["A photo of a sneaker.", "A low resolution image of a pair of trousers.", "A hen."]
  ids = fedma_real.tokenize(towers, texts, 24)
  assert ids.dtype == np.int32 and ids.shape[0] == 3
  lengths = []
  for row, text in zip(ids, texts):
    end = list(row).index(eos)
    lengths.append(end + 1)
    assert set(row[end + 1:].tolist()) <= {pad}  # padding only after the end token
    assert towers.tokenizer.decode(row[:end].tolist()) == text
  assert ids.shape[1] == max(lengths)  # as long as the longest caption, no longer
  # Cut to 4 tokens: three words and the end token, which is kept.
  cut = fedma_real.tokenize(towers, texts[1:2], 4)
  assert cut.shape == (1, 4) and cut[0, -1] == eos
  np.testing.assert_array_equal(cut[0, :3], ids[1, :3])
  assert towers.tokenizer.decode(cut[0, :3].tolist()) == "A low resolution"


def test_generate_captions_count_type_determinism(built, floor, towers):
  config, setup = built
  init = floor[0]
  vis = setup.test.examples["vis"][:2]
  first = fedma_real.generate_captions(config, towers, init, vis, max_new_tokens=3)
  again = fedma_real.generate_captions(config, towers, init, vis, max_new_tokens=3)
  assert len(first) == 2 and all(isinstance(t, str) for t in first)
  assert first == again


def test_generate_captions_cuts_at_the_first_end_token(built, floor, towers, monkeypatch):
  config, setup = built
  words = towers.tokenizer.encode("A red hen", add_special_tokens=False).ids
  more = towers.tokenizer.encode("A red hen on a", add_special_tokens=False).ids
  assert len(words) == 3 and len(more) == 5
  s = towers.special
  # Row 0 stops at <|endoftext|>, row 1 at <|im_end|>, row 2 runs to the limit;
  # what follows a stop token (more words) must not be returned.
  rows = jnp.asarray([words[:2] + [s.endoftext] + words[2:] + [s.pad],
                      words[:1] + [s.im_end] + words[1:] + [s.endoftext],
                      more], jnp.int32)
  monkeypatch.setattr(smollm, "greedy_generate", lambda module, params, prefix, n, stops: rows)
  vis = setup.test.examples["vis"][:3]
  out = fedma_real.generate_captions(config, towers, floor[0], vis, max_new_tokens=5)
  assert out == ["A red", "A", "A red hen on a"]


# ----------------------------------------------------------------- split


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.2, 0.5, 0.9])
def test_held_out_split_per_client(fraction):
  rng = np.random.default_rng(int(fraction * 100))
  k = 7
  # Sizes 0, 1, 2, 3 and bigger; rows of a client interleaved with others'.
  ids = np.concatenate([np.full(n, c) for c, n in enumerate([0, 1, 2, 3, 10, 25, 40])])
  ids = np.r_[rng.permutation(ids), [-1, -1]]  # unassigned rows are never held out
  test = fedma_real._held_out(ids, fraction, k)
  assert not test[ids < 0].any()
  for c in range(k):
    rows = np.flatnonzero(ids == c)
    held = test[rows]
    n_test = int(held.sum())
    if rows.size >= 2:  # at least one row to train on and one to test on
      assert 1 <= n_test <= rows.size - 1
      assert n_test == max(min(int(np.floor(fraction * rows.size)), rows.size - 1), 1)
    else:
      assert n_test == 0
    # Held-out rows are the client's last rows (a suffix in row order).
    np.testing.assert_array_equal(held, np.arange(rows.size) >= rows.size - n_test)


def test_built_split_rows_add_up(built, towers):
  _, setup = built
  info = setup.info
  labelled = info["train_rows"]["labelled"]
  # Every fixture row is assigned to a client here: train + test = all of them.
  assert labelled + info["test_rows"] == LABELLED_ROWS
  assert setup.train.num_examples == labelled + 2 and setup.test.num_examples == info["test_rows"]
  # Each client (all hold >= 2 labelled rows at 60 rows / 6 clients) keeps
  # rows on both sides.
  assert np.all(np.asarray(setup.test.sizes) >= 1)
  assert np.all(np.asarray(setup.train.sizes) >= 1)
  # No row is on both sides: the fixture images are all distinct, so are their features.
  train_vis = setup.train.examples["vis"].reshape(setup.train.num_examples, -1)
  test_vis = setup.test.examples["vis"].reshape(setup.test.num_examples, -1)
  assert len(np.unique(np.r_[train_vis, test_vis], axis=0)) == len(train_vis) + len(test_vis)
  # Each held-out row's first probe names the row's own class: its caption (any
  # template) ends like "A photo of a bag." after "A photo of ".
  decode = lambda ids: towers.tokenizer.decode([int(t) for t in ids if t != towers.special.pad])
  for tokens, probes in zip(setup.test.examples["tokens"], setup.test.examples["probes"]):
    assert decode(tokens).endswith(decode(probes[0]).removeprefix("A photo of "))


# ----------------------------------------------------------------- feature norm


def test_feature_norm_by_hand():
  # Two rows x two tokens of three dims; statistics pool rows and tokens.
  vis = np.array([[[0.0, 1.0, 5.0], [2.0, 1.0, 5.0]],
                  [[4.0, 1.0, 5.0], [6.0, 1.0, 5.0]]], np.float32)
  norm = FeatureNorm.fit(vis)
  # dim 0: values 0, 2, 4, 6 -> mean 3, variance (9 + 1 + 1 + 9) / 4 = 5;
  # dims 1, 2 are constant: variance 0, so the 1e-2 floor gives scale 10 and
  # the standardized value 0 (a constant dimension carries nothing).
  np.testing.assert_allclose(norm.mean, [3.0, 1.0, 5.0], rtol=1e-6)
  np.testing.assert_allclose(norm.scale, [1 / np.sqrt(5.01), 10.0, 10.0], rtol=1e-6)
  out = norm(vis)
  assert out.dtype == np.float32 and out.shape == vis.shape
  np.testing.assert_allclose(out[..., 0], (vis[..., 0] - 3.0) / np.sqrt(5.01), rtol=1e-6)
  np.testing.assert_array_equal(out[..., 1:], 0.0)
  # A value off the training range is scaled, not clipped: 10x at most.
  np.testing.assert_allclose(norm(np.array([[[3.0, 1.5, 5.0]]], np.float32)), [[[0, 5, 0]]],
                             atol=1e-6)


def test_build_standardizes_with_the_training_rows_statistics(built, sources, towers):
  config, setup = built
  raw_config = tiny_config(sources, feature_norm="none")
  raw = fedma_real.build(raw_config, towers=towers)
  assert setup.info["feature_norm"] == "standardize" and raw.info["feature_norm"] == "none"
  assert fedma_real.feature_norm(raw_config, towers) is None
  train_raw = np.asarray(raw.train.examples["vis"], np.float64)[:raw.train.num_examples]
  # Reference: mean and variance of the raw training features (rows, not the
  # held-out ones), written here with NumPy.
  mean = train_raw.reshape(-1, train_raw.shape[-1]).mean(0)
  var = train_raw.reshape(-1, train_raw.shape[-1]).var(0)
  ref = lambda x: (np.asarray(x, np.float64) - mean) / np.sqrt(var + 1e-2)
  assert np.abs(mean).max() > 0.1   # the raw features are not centred already
  np.testing.assert_allclose(setup.train.examples["vis"][:setup.train.num_examples],
                             ref(train_raw), atol=2e-5)
  n_test = setup.test.num_examples
  np.testing.assert_allclose(setup.test.examples["vis"][:n_test],
                             ref(raw.test.examples["vis"][:n_test]), atol=2e-5)
  # Held-out stamps go through the same map (fitted on the training rows).
  stamps, raw_stamps = (fedma_real.stamp_test(c, towers) for c in (config, raw_config))
  np.testing.assert_allclose(stamps["vis"], ref(raw_stamps["vis"]), atol=2e-5)
  np.testing.assert_array_equal(stamps["tokens"], raw_stamps["tokens"])


# ----------------------------------------------------------------- cache


def test_features_are_cached_and_reused(built, towers, feature_cache, monkeypatch):
  config, _ = built
  # One file per source split built so far (the stamps' test split appears
  # once a test has scored it).
  files = sorted(p.name for p in feature_cache.glob("*-train-*.npy"))
  assert len(files) == 2 and files[0].startswith("fashion_mnist_captions-train-")
  assert files[1].startswith("tux_paint_stamps-train-")
  before = fedma_real.encoded(config, towers, config.data.labelled, "train", None)

  def no_tower(*args, **kwargs):
    raise AssertionError("the vision tower ran although the features are cached")

  monkeypatch.setattr(efficientnet, "encode", no_tower)
  after = fedma_real.encoded(config, towers, config.data.labelled, "train", None)
  np.testing.assert_array_equal(after["vis"], before["vis"])
  # Other images (fewer rows) get a key of their own, so the stale entry is not read.
  with pytest.raises(AssertionError, match="vision tower ran"):
    fedma_real.encoded(config, towers, config.data.labelled, "train", 30)


# ----------------------------------------------------------------- bf16


def test_bf16_towers_match_float32(built, floor, own_loss, sources, towers, monkeypatch):
  _, setup = built
  init = floor[0]
  # The vision tower does not depend on lm_dtype: reuse the loaded one.
  monkeypatch.setattr(efficientnet, "load_params", lambda *a, **kw: towers.vision)
  bf16_config = tiny_config(sources, lm_dtype="bfloat16")
  bf16 = fedma_real.build_towers(bf16_config)
  assert {x.dtype for x in jax.tree.leaves(bf16.lm_params)} == {jnp.dtype(jnp.bfloat16)}
  bf16_setup = fedma_real.build(bf16_config, towers=bf16)
  test = jax.tree.map(jnp.asarray, setup.test.examples)
  np.testing.assert_array_equal(bf16_setup.test.examples["tokens"], test["tokens"])
  half = np.asarray(jax.jit(bf16_setup.task.per_example_loss)(init, bf16_setup.task.frozen,
                                                              test))
  f32 = own_loss
  assert np.all(np.isfinite(half))
  # bf16 keeps ~3 significant digits; over two blocks and a 49k-way softmax
  # the per-row caption NLL (~16-21 nats) moved by at most 0.28% (measured).
  np.testing.assert_allclose(half, f32, rtol=0.01)


# ----------------------------------------------------------------- config


def _valid_config():
  return config_files.load(ROOT / "configs/fedma_real.py", "cpu")


def test_the_presets_are_valid():
  validation.validate(_valid_config())
  validation.validate(config_files.load(ROOT / "configs/fedma_real.py", "gpu"))


@pytest.mark.parametrize("path, value", [
    ("model.vision_tokens", 2), ("model.vision_tokens", 64),
    ("model.feature_norm", "zscore"),
    ("model.lm_layers", -1), ("model.lm_layers", 31),
    ("model.lm_dtype", "float16"),
    ("model.prompt", ""),
    ("data.labelled", "mnist"),
    ("data.captioned", "coco_captions"),
    ("model.max_caption_tokens", 1),
    ("data.partition.kind", "shards"),
    ("data.partition.alpha", 0.0), ("data.partition.alpha", -1.0),
    ("data.labelled_examples", -1),
    ("data.feature_dtype", "float16"),
    ("data.eval_clients", -1),
    ("model.objective", "contrastive"),
    ("model.projector.kind", "mlp3x_gelu"),
    ("model.projector.hidden_dim", -1),
])
def test_config_guard(path, value):
  config = _valid_config()
  *parents, leaf = path.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value
  with pytest.raises(configuration.ConfigError, match=re.escape(f"config.{path}")):
    validation.validate(config)
