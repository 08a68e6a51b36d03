"""Real-data builders on tiny fixtures: stamps, IDX Fashion-MNIST, tfds mock, packing."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
Image = pytest.importorskip("PIL.Image")

import real_fixtures  # noqa: E402  (tests/ is on sys.path under pytest)
from fedjax_mm.data import partition  # noqa: E402
from fedjax_mm.data import real_sources as rs  # noqa: E402
from fedjax_mm.data import tfds as fdt  # noqa: E402

STAMPS = real_fixtures.STAMPS
SIZE = 16
_idx = real_fixtures.idx


@pytest.fixture(scope="module")
def stamps_dir(tmp_path_factory):
  return real_fixtures.write_stamps(tmp_path_factory.mktemp("stamps"))


def test_stamp_files_and_split(stamps_dir):
  found, skipped = rs.stamp_files(str(stamps_dir))
  assert found == sorted((rel, cap, rel.split("/")[0]) for rel, (_, cap) in STAMPS.items())
  assert skipped == {"symbols": 1, "svg_only": 1}
  assert [rs.stamp_split(rel, 10) for rel, *_ in found] == ["train", "test", "train"]


def test_stamps_build_and_load(stamps_dir, tmp_path):
  builder = rs.build_real_dataset("tux_paint_stamps", tmp_path, str(stamps_dir))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2, "test": 1}
  again = rs.build_real_dataset("tux_paint_stamps", tmp_path, str(stamps_dir))
  assert again.data_dir == builder.data_dir  # prepared once, then reused
  train = rs.load_pairs("tux_paint_stamps", "train", tmp_path, image_size=SIZE,
                        source_dir=str(stamps_dir))
  test = rs.load_pairs("tux_paint_stamps", "test", tmp_path, image_size=SIZE,
                       source_dir=str(stamps_dir))
  assert list(train["caption"]) == ["A blackbird.", "A cherimoya fruit."]
  by_path = rs.load_pairs(builder.data_dir, "train", None, image_size=SIZE)
  for key in ("image", "caption", "label"):
    np.testing.assert_array_equal(by_path[key], train[key])
  assert list(test["caption"]) == ["A hen."]
  labels = [rs.STAMP_CATEGORIES.index(c) for c in ("animals", "food", "animals")]
  np.testing.assert_array_equal(np.r_[train["label"], test["label"]], labels)
  assert train["label"].dtype == np.int32 and train["image"].shape == (2, SIZE, SIZE, 3)
  stored = builder.as_data_source("train")[0]["image"]
  assert stored.shape == (64, 64, 3)
  # Padded to a square on white, red on the left, white where it was transparent.
  for image in (train["image"][0], test["image"][0], stored):
    s = image.shape[0]
    np.testing.assert_allclose(image[s // 2, s // 4], (255, 0, 0), atol=24)
    assert image[: s // 8].min() >= 230 and image[-(s // 8):].min() >= 230  # pad rows
    assert image[s // 3: 2 * s // 3, 5 * s // 8:].min() >= 230  # transparent half
  assert train["image"][1][SIZE // 2, 3 * SIZE // 4].max() < 30  # RGB: black stays
  with pytest.raises(ValueError, match="templates"):
    rs.load_pairs("tux_paint_stamps", "train", tmp_path, image_size=SIZE,
                  source_dir=str(stamps_dir), templates=("A {}.",))


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
  rng = np.random.default_rng(0)
  splits = {stem: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                   [0, 8, 9] * (n // 3))  # T-shirt/top, Bag, Ankle boot
            for stem, n in (("train", 12), ("t10k", 6))}
  return real_fixtures.write_fashion(tmp_path_factory.mktemp("fashion"), splits)


def test_read_idx_and_articles(fashion_dir, tmp_path):
  images = rs.read_idx(fashion_dir / "train-images-idx3-ubyte.gz")
  np.testing.assert_array_equal(images, np.load(fashion_dir / "train.npy"))
  wide = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
  (tmp_path / "w.idx").write_bytes(_idx(wide, 0x0C))
  np.testing.assert_array_equal(rs.read_idx(tmp_path / "w.idx"), wide)
  with pytest.raises(ValueError, match="not an IDX"):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    rs.read_idx(tmp_path / "bad")
  assert [rs.with_article(w) for w in ("ankle boot", "T-shirt", "umbrella", "unicorn",
                                       "hour", "pair of trousers", "eagle", "one-piece")
          ] == ["an ankle boot", "a T-shirt", "an umbrella", "a unicorn", "an hour",
                "a pair of trousers", "an eagle", "a one-piece"]


def _expected(label, templates=rs.FASHION_TEMPLATES):
  noun = {0: "a T-shirt", 8: "a bag", 9: "an ankle boot"}[label]
  return {t.format(noun) for t in templates}


@pytest.fixture(scope="module")
def fashion_train(fashion_dir, tmp_path_factory):
  return rs.load_pairs("fashion_mnist_captions", "train", tmp_path_factory.mktemp("tfds"),
                       image_size=28, source_dir=str(fashion_dir))


def test_fashion_build_and_load(fashion_dir, fashion_train, tmp_path):
  np.testing.assert_array_equal(fashion_train["label"], [0, 8, 9] * 4)
  images = np.load(fashion_dir / "train.npy")
  np.testing.assert_array_equal(fashion_train["image"],
                                np.repeat(images[..., None], 3, -1))  # bit for bit
  for text, label in zip(fashion_train["caption"], fashion_train["label"]):
    assert text in _expected(label)
  assert len(set(fashion_train["caption"])) > 3  # several templates drawn
  picks = rs.template_picks(0, 12, len(rs.FASHION_TEMPLATES))
  assert list(fashion_train["caption"]) == rs.template_captions(
      fashion_train["label"], rs.FASHION_CLASSES, rs.FASHION_TEMPLATES, picks)
  test = rs.load_pairs("fashion_mnist_captions", "test", tmp_path, image_size=14,
                       source_dir=str(fashion_dir), limit=4,
                       templates=("{} on white.", "Look: {}!"))
  assert test["image"].shape == (4, 14, 14, 3) and len(test["caption"]) == 4
  for text, label in zip(test["caption"], test["label"]):
    assert text in _expected(label, ("{} on white.", "Look: {}!"))


def test_tfds_fashion_mnist_mock(monkeypatch, tmp_path):
  from tensorflow_datasets.testing import mocking
  # tfds 4.9.10's mock binds __getitems__ without `self` (see test_tfds._Unbatched);
  # this is that function minus `self`, so load_pairs' batched reads work.
  monkeypatch.setattr(mocking, "_getitems",
                      lambda keys, generator, serialized=False: [generator[k] for k in keys])
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    source = tfds.data_source("fashion_mnist", split="train", data_dir=tmp_path)
    records = [source[i] for i in range(10)]
    arrays = rs.load_pairs("fashion_mnist", "train", tmp_path, image_size=28, limit=7,
                           batch_size=3)
  assert arrays["image"].shape == (7, 28, 28, 3) and arrays["label"].dtype == np.int32
  np.testing.assert_array_equal(arrays["image"][..., 0], [r["image"][..., 0] for r in records[:7]])
  np.testing.assert_array_equal(arrays["label"], [r["label"] for r in records[:7]])
  for text, label in zip(arrays["caption"], arrays["label"]):
    noun = rs.with_article(rs.class_noun(rs.FASHION_CLASSES[label]))
    assert text in {t.format(noun) for t in rs.FASHION_TEMPLATES}


def test_missing_source_names_the_command(tmp_path):
  for name in rs.BUILDERS:
    with pytest.raises(FileNotFoundError, match="scripts/setup_real_data.sh"):
      rs.build_real_dataset(name, tmp_path / "data", str(tmp_path / "absent"))
  assert not (tmp_path / "data").exists()  # failed before tfds wrote anything
  with pytest.raises(ValueError, match="must be one of"):
    rs.build_real_dataset("coco", tmp_path)


def test_dirichlet_partition_packs_every_row(fashion_train):
  arrays = dict(fashion_train, row=np.arange(12))
  part = partition.partition({"kind": "dirichlet", "alpha": 0.5}, num_clients=4,
                             concepts=arrays["label"], seed=1)
  data = partition.pack_assigned(arrays, part.client_ids, 4)
  assert int(data.sizes.sum()) == 12 and sorted(data.examples["row"]) == list(range(12))
  fed = fdt.to_federated(arrays, part.client_ids, 4)
  for k in range(4):
    mine = slice(fed.offsets[k], fed.offsets[k] + fed.sizes[k])
    rows = np.flatnonzero(part.client_ids == k)  # a client's rows keep their order
    np.testing.assert_array_equal(fed.examples["row"][mine], rows)
    np.testing.assert_array_equal(fed.examples["image"][mine], arrays["image"][rows])
    assert list(fed.examples["caption"][mine]) == list(arrays["caption"][rows])
