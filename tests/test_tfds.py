"""TFDS data path without TensorFlow: world round trip, cifar10 mock, coco-like, tokenizer."""

import io

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from fedjax_mm.data import captions, tokenizer as tok, world  # noqa: E402
from fedjax_mm.data import tfds as fdt  # noqa: E402

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
           "ship", "truck")
SEED, NUM_TRAIN, NUM_TEST = 3, 200, 50


@pytest.fixture(scope="module")
def world_builder(tmp_path_factory):
  return fdt.build_world_dataset(tmp_path_factory.mktemp("tfds"), seed=SEED,
                                 num_train=NUM_TRAIN, num_test=NUM_TEST)


def test_world_round_trip_to_federated(world_builder):
  scenes = world.generate(world.WorldSpec(), SEED, NUM_TRAIN + NUM_TEST)
  t = world.make_tokenizer()
  sources = world_builder.as_data_source()
  assert set(sources) == {"train", "test"}
  for split, rows in (("train", slice(0, NUM_TRAIN)), ("test", slice(NUM_TRAIN, None))):
    source = sources[split]
    arrays = fdt.load_image_caption(source, tokenizer=t, batch_size=64)
    assert arrays["image"].dtype == np.uint8 and arrays["tokens"].dtype == np.int32
    np.testing.assert_array_equal(arrays["image"], scenes.images[rows])  # bit for bit
    attrs = {k: v[rows] for k, v in scenes._asdict().items() if k != "images"}
    # Tokens are exactly the world's own natural-style rendering...
    np.testing.assert_array_equal(arrays["tokens"], captions.render(t, attrs, 0))
    # ... and decode back to the caption text stored in the dataset.
    stored = [r["caption"].decode() for r in source.__getitems__(list(range(len(source))))]
    assert [t.decode(ids) for ids in arrays["tokens"]] == stored
    for name, value in attrs.items():
      np.testing.assert_array_equal(arrays[name], value, err_msg=name)
      assert arrays[name].dtype == (np.bool_ if name == "has_distractor" else np.int32)

  arrays = fdt.load_image_caption(sources["train"], tokenizer=t)
  data = fdt.to_federated(arrays, np.arange(NUM_TRAIN) % 10, 10)
  np.testing.assert_array_equal(data.sizes, np.full(10, NUM_TRAIN // 10))
  np.testing.assert_array_equal(data.offsets, np.arange(10) * (NUM_TRAIN // 10))
  for k in range(10):  # client k owns rows k, k + 10, ... in their order
    mine = slice(data.offsets[k], data.offsets[k] + data.sizes[k])
    for key, value in arrays.items():
      np.testing.assert_array_equal(data.examples[key][mine], value[k::10])

  first = fdt.load_image_caption(sources["test"], tokenizer=t, max_examples=7)
  np.testing.assert_array_equal(first["image"], scenes.images[NUM_TRAIN:NUM_TRAIN + 7])


class _Unbatched:
  """Only ``len`` and ``[i]``: tfds 4.9.10's mocked ``__getitems__`` is broken.

  ``mock_data`` assigns a ``functools.partial`` without ``self`` as the
  mock's ``__getitems__`` (TypeError: _getitems() missing 1 required
  positional argument: 'record_keys'); ``__getitem__`` works.
  """

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    return self._source[i]


def test_cifar10_mock_label_path_uses_templates(tmp_path):
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    builder = tfds.builder("cifar10", data_dir=tmp_path)
    source = builder.as_data_source("train")  # the mock requires a split
    records = [source[i] for i in range(len(source))]
    texts = [tpl.format(c) for tpl in fdt.DEFAULT_TEMPLATES for c in CIFAR10]
    t = fdt.build_tokenizer(texts)
    arrays = fdt.load_image_caption(_Unbatched(source), tokenizer=t, label_key="label",
                                    class_names=CIFAR10, max_length=8, batch_size=10)
  np.testing.assert_array_equal(arrays["image"], np.stack([r["image"] for r in records]))
  np.testing.assert_array_equal(arrays["label"], [r["label"] for r in records])
  assert arrays["label"].dtype == np.int32 and set(arrays) == {"image", "tokens", "label"}
  used = set()
  for ids, label in zip(arrays["tokens"], arrays["label"]):
    options = [tpl.format(CIFAR10[label]) for tpl in fdt.DEFAULT_TEMPLATES]
    assert t.decode(ids) in options
    used.add(options.index(t.decode(ids)))
  assert used == {0, 1, 2}


def _png(image: np.ndarray) -> bytes:
  from PIL import Image
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


class CocoLike(tfds.core.GeneratorBasedBuilder):
  """Coco_captions' feature layout: encoded images, caption Sequence, "image/id"."""

  VERSION = tfds.core.Version("1.0.0")
  NAMES = ("cat", "dog", "traffic light")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                 features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "image/id": np.int64,
        "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
        "label": tfds.features.ClassLabel(names=self.NAMES)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      # Non-square; the border rows differ and must be cropped away.
      image = np.full((40 + 2 * i, 36, 3), 10 * i, np.uint8)
      image[:i + 2], image[-(i + 2):] = 255, 255
      yield i, {"image": _png(image), "image/id": 1000 + i, "label": i % 3,
                "captions": [{"text": f"Caption {i}: A Dog, {i}!", "id": 2 * i},
                             {"text": f"The second one of {i}, long enough to truncate.",
                              "id": 2 * i + 1}]}


def test_coco_like_source_read_from_directory(tmp_path):
  written = CocoLike(data_dir=tmp_path, file_format="array_record")
  written.download_and_prepare()
  # What a machine without TF does with a coco_captions prepared elsewhere.
  builder = tfds.builder_from_directory(written.data_dir)
  text_only = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  texts = fdt.read_captions(text_only, caption_key="captions/text", caption_index=1)
  assert texts[2] == "The second one of 2, long enough to truncate."
  t = fdt.build_tokenizer(texts)
  source = builder.as_data_source("train")
  arrays = fdt.load_image_caption(source, tokenizer=t, caption_key="captions/text",
                                  caption_index=1, max_length=6, image_size=16)
  assert arrays["image"].shape == (6, 16, 16, 3)
  np.testing.assert_array_equal(arrays["image"],
                                np.broadcast_to(10 * np.arange(6)[:, None, None, None],
                                                (6, 16, 16, 3)))
  np.testing.assert_array_equal(arrays["image/id"], 1000 + np.arange(6))
  assert arrays["image/id"].dtype == np.int32
  assert t.decode(arrays["tokens"][4]) == "the second one of 4"  # 5 words + EOS
  assert arrays["tokens"][4, -1] == tok.EOS
  # Label path with the class names the dataset itself carries.
  names = fdt.build_tokenizer(["a photo of"] + list(CocoLike.NAMES))
  labelled = fdt.load_image_caption(source, tokenizer=names, label_key="label",
                                    templates=("a photo of a {}",), max_length=8)
  np.testing.assert_array_equal(labelled["label"], np.arange(6) % 3)
  assert [names.decode(ids) for ids in labelled["tokens"][:3]] == [
      "a photo of a cat", "a photo of a dog", "a photo of a traffic light"]


def test_build_tokenizer_lowercases_and_splits_punctuation():
  t = fdt.build_tokenizer(["A Dog, running!", "the DOG's ball."])
  assert t.vocab[:len(tok.SPECIALS)] == tok.SPECIALS
  assert set(t.vocab[len(tok.SPECIALS):]) == {"a", "dog", ",", "running", "!", "the",
                                              "'", "s", "ball", "."}
  assert fdt.words("Hello,World. ok") == ["hello", ",", "world", ".", "ok"]
  ids = fdt.encode(t, "The dog, running.", 8)
  assert ids.shape == (8,) and ids.dtype == np.int32
  assert t.decode(ids) == "the dog , running ."
  assert list(ids[5:]) == [tok.EOS, tok.PAD, tok.PAD]
  assert t.decode(fdt.encode(t, "a cat", 4)) == "a <unk>"
  assert t.decode(fdt.encode(t, "a dog running the ball", 3)) == "a dog"  # truncated
  frequent = fdt.build_tokenizer(["b b b a a c", "c d"], max_words=2)
  assert frequent.vocab[len(tok.SPECIALS):] == ("a", "b")  # ties broken by word
