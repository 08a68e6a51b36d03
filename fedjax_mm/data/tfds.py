"""TFDS data path: the synthetic world as a TFDS dataset, and a generic loader.

Everything here runs with ``tensorflow-datasets`` and ``array-record`` but
*without* TensorFlow: datasets are written as ``array_record`` files and read
back through ``builder.as_data_source()`` (random access, numpy records).
``tfds.load``/``as_dataset`` and the ``tfrecord`` format need TensorFlow.

* :class:`ShapesWorld` / :func:`build_world_dataset` write the embedded world
  (images, caption text in one style, attributes) into a local ``data_dir``;
  nothing is downloaded, the splits come from :func:`world.generate`.
* :func:`load_image_caption` reads any image-caption or image-label source
  into packed numpy arrays (``image`` uint8 ``[N, S, S, 3]``, ``tokens`` int32
  ``[N, L]`` and every integer/bool scalar feature); :func:`to_federated`
  packs them into a :class:`~fedjax_mm.data.federated.FederatedData`.

Real data. Preparing a TFDS dataset usually needs TensorFlow (builders read
files with ``tf.io.gfile`` and encode images with ``tf.image``); *reading* a
prepared ``array_record`` directory does not. So prepare once where TF is
installed, e.g. ``tfds.builder("coco_captions", data_dir=DIR)
.download_and_prepare(file_format="array_record")``, then here::

    builder = tfds.builder_from_directory(f"{DIR}/coco_captions/2014/1.1.0")
    texts = read_captions(builder.as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()}),  # no image decoding
        caption_key="captions/text")
    arrays = load_image_caption(builder.as_data_source("train"),
                                tokenizer=build_tokenizer(texts, max_words=10_000),
                                caption_key="captions/text", caption_index=0)

``coco_captions`` (COCO 2014 in the Karpathy splits: train 82,783, val 5,000,
test 5,000, restval 30,504) needs no manual download: it fetches ~37.6 GiB of
zips from cocodataset.org plus the split file, but its builder code imports
TensorFlow (here ``tfds.builder("coco_captions")`` raises
``ModuleNotFoundError: No module named 'tensorflow'``). Its features:
``image`` (variable-size JPEG, decoded here by PIL), ``image/filename``,
``image/id`` (int64), ``captions`` = ``Sequence({"text": str, "id": int64})``
(about 5 per image) and ``objects``. Image-label data (``cifar10``: features
``id``, ``image``, ``label``) goes through ``label_key="label"``; captions come
from ``templates`` and the class names stored in the prepared dataset.
Images are center-cropped and resized to ``image_size``.

Verified here (tfds 4.9.10, no TF): the world round trip, cifar10 under
``tfds.testing.mock_data`` and a coco-shaped builder (PNG ``Image``,
``Sequence`` captions, a slashed key, ``ClassLabel``) read back through
``builder_from_directory``. Real coco_captions/cifar10 files were not.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from fedjax_mm.data import captions, federated, world
from fedjax_mm.data import tokenizer as tok

DEFAULT_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}")
_WORLD_LABELS = {  # ClassLabel names of the world's attributes
    "shape": world.SHAPES, "color": world.COLORS, "size": world.SIZES,
    "position": tuple("_".join(p) for p in world.POSITIONS),
    "count": world.COUNTS, "domain": world.DOMAINS}
_DISTRACTOR = ("d_shape", "d_color", "d_size", "d_position")


def words(text: str) -> list[str]:
  """Lowercased words with punctuation split off ("A dog." -> a, dog, .)."""
  return re.findall(r"\w+|[^\w\s]", text.lower())


def build_tokenizer(texts: Sequence[str], max_words: int | None = None) -> tok.Tokenizer:
  """A word-level tokenizer for real captions.

  Args:
    texts: captions; split by :func:`words` (lowercase, punctuation apart).
    max_words: keep the most frequent words only (others encode as UNK).

  Returns:
    A :class:`~fedjax_mm.data.tokenizer.Tokenizer` (ids 0-4 are specials).
  """
  counts = collections.Counter(w for text in texts for w in words(text))
  # Sort by (-count, word) so the kept vocabulary does not depend on text order.
  ranked = sorted(counts, key=lambda w: (-counts[w], w))
  return tok.Tokenizer(ranked[:max_words])


def encode(tokenizer: tok.Tokenizer, text: str, length: int) -> np.ndarray:
  """``[length]`` int32 ids: words (truncated to fit), EOS, PAD."""
  return tokenizer.encode(" ".join(words(text)[:length - 1]), length)


@dataclasses.dataclass(eq=False)
class ShapesWorldConfig(tfds.core.BuilderConfig):
  """What to generate; make one with :func:`world_config` (it names it)."""

  seed: int = 0
  num_train: int = 10_000
  num_test: int = 1_000
  spec: world.WorldSpec = world.WorldSpec()
  style: str = "natural"


def world_config(seed: int = 0, num_train: int = 10_000, num_test: int = 1_000,
                 spec: world.WorldSpec = world.WorldSpec(), style: str = "natural"
                 ) -> ShapesWorldConfig:
  """A config whose name (hence directory) is unique to its content."""
  if style not in world.STYLES:
    raise ValueError(f"style must be one of {world.STYLES}, got {style!r}")
  digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:8]
  return ShapesWorldConfig(name=f"s{seed}_{num_train}_{num_test}_{style}_{digest}",
                           version=ShapesWorld.VERSION, seed=seed, num_train=num_train,
                           num_test=num_test, spec=spec, style=style)


def world_examples(config: ShapesWorldConfig) -> tuple[world.Scenes, list[str]]:
  """The scenes (train rows first, then test) and their caption text."""
  scenes = world.generate(config.spec, config.seed, config.num_train + config.num_test)
  t = world.make_tokenizer()
  ids = captions.render(t, scenes._asdict(), world.STYLES.index(config.style))
  return scenes, [t.decode(row) for row in ids]


class ShapesWorld(tfds.core.GeneratorBasedBuilder):
  """The synthetic world as a local TFDS image-caption dataset (no download)."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10 resolves the file of a builder defined in a package through
    # `importlib_resources`, which it installs only for Python < 3.9
    # (ModuleNotFoundError in download_and_prepare); this is the same file.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    labels = {k: tfds.features.ClassLabel(names=v) for k, v in _WORLD_LABELS.items()}
    labels.update({k: tfds.features.ClassLabel(names=_WORLD_LABELS[k[2:]])
                   for k in _DISTRACTOR})
    return tfds.core.DatasetInfo(
        builder=self,
        description="Procedural 32x32 scenes with captions (fedjax_mm.data.world).",
        # Raw uint8 tensor: tfds.features.Image needs TensorFlow to encode arrays.
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            "has_distractor": tfds.features.Scalar(dtype=np.bool_),
            **labels}),
        # Keep generation order so row i of a split is scene i of world.generate.
        disable_shuffling=True)

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # generated, not downloaded
    config = self.builder_config
    if not isinstance(config, ShapesWorldConfig):
      raise ValueError("ShapesWorld needs config=world_config(...)")
    scenes, texts = world_examples(config)
    n = config.num_train
    return {"train": self._generate_examples(scenes, texts, 0, n),
            "test": self._generate_examples(scenes, texts, n, n + config.num_test)}

  def _generate_examples(self, scenes: world.Scenes, texts: list[str], start: int, stop: int):
    for i in range(start, stop):
      yield i - start, {"image": scenes.images[i], "caption": texts[i],
                        "has_distractor": bool(scenes.has_distractor[i]),
                        **{k: int(getattr(scenes, k)[i]) for k in
                           (*_WORLD_LABELS, *_DISTRACTOR)}}


def build_world_dataset(data_dir: str | os.PathLike, *, seed: int = 0, num_train: int,
                        num_test: int, spec: world.WorldSpec = world.WorldSpec(),
                        style: str = "natural") -> ShapesWorld:
  """Writes the world into ``data_dir`` as array_record (a no-op if present).

  Args:
    data_dir: TFDS data directory; the dataset lands in
      ``data_dir/shapes_world/<config name>/1.0.0``.
    seed: :func:`world.generate` seed; ``num_train + num_test`` scenes are
      generated at once, train rows first.
    num_train: examples in the "train" split.
    num_test: examples in the "test" split.
    spec: world difficulty knobs.
    style: caption style stored as text (one of ``world.STYLES``).

  Returns:
    The prepared builder; ``builder.as_data_source()[split]`` reads it.
  """
  builder = ShapesWorld(config=world_config(seed, num_train, num_test, spec, style),
                        data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder


def _get(record: Mapping[str, Any], key: str) -> Any:
  """``record[key]``; "a/b" reads a nested feature unless "a/b" is a key itself."""
  if key in record or "/" not in key:
    return record[key]
  head, rest = key.split("/", 1)
  return _get(record[head], rest)


def _text(value: Any, index: int) -> str:
  if not isinstance(value, (str, bytes)):  # a Sequence of captions (coco: ~5)
    value = value[index]
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _image(value: Any, size: int) -> np.ndarray:
  """Any HxW(xC) image -> uint8 [size, size, 3]; center crop, then resize."""
  image = np.asarray(value, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  h, w = image.shape[:2]
  if (h, w) != (size, size):
    from PIL import Image  # pylint: disable=g-import-not-at-top (only for resizing)
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top:top + side, left:left + side, :3])
    image = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
  return image


def _records(source: Sequence[Any], stop: int, batch_size: int):
  """Yields ``(start, records)`` chunks: one batched read each when supported."""
  get_many = getattr(source, "__getitems__", None)
  for start in range(0, stop, batch_size):
    keys = list(range(start, min(start + batch_size, stop)))
    yield start, (get_many(keys) if get_many else [source[i] for i in keys])


def _scalar(value: Any) -> bool:
  return np.ndim(value) == 0 and np.asarray(value).dtype.kind in "biu"


def read_captions(source: Sequence[Any], *, caption_key: str = "caption",
                  caption_index: int = 0, max_examples: int | None = None,
                  batch_size: int = 512) -> list[str]:
  """The caption text of the first ``max_examples`` records (for a vocabulary)."""
  n = len(source) if max_examples is None else min(max_examples, len(source))
  return [_text(_get(r, caption_key), caption_index)
          for _, chunk in _records(source, n, batch_size) for r in chunk]


def load_image_caption(
    source: Sequence[Any], *, tokenizer: tok.Tokenizer, image_key: str = "image",
    caption_key: str = "caption", caption_index: int = 0, label_key: str | None = None,
    class_names: Sequence[str] | None = None, templates: Sequence[str] = DEFAULT_TEMPLATES,
    max_length: int = world.CAPTION_LENGTH, max_examples: int | None = None,
    image_size: int = 32, batch_size: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
  """Reads a random-access source (``builder.as_data_source()[split]``) to arrays.

  Args:
    source: records are dicts of numpy values; ``len`` and ``[i]`` suffice,
      ``__getitems__`` (tfds data sources) is used for batched reads.
    tokenizer: encodes captions (see :func:`build_tokenizer`).
    image_key: the image feature.
    caption_key: the caption text; "a/b" reads nested features (coco:
      "captions/text"); ignored when ``label_key`` is set.
    caption_index: which caption when a record has several.
    label_key: for image-label data: captions are ``templates`` filled with
      the label's class name.
    class_names: label names; default ``source.dataset_info.features[label_key].names``.
    templates: caption templates with one ``{}``; one drawn per example.
    max_length: token length L (captions are truncated to fit, EOS kept).
    max_examples: read only the first this many records.
    image_size: output side S; other sizes are center-cropped and resized.
    batch_size: records per read.
    seed: draws the templates.

  Returns:
    ``{"image": uint8 [N, S, S, 3], "tokens": int32 [N, L]}`` plus every scalar
    int/bool feature of the records (int32 if it fits, else int64).
  """
  n = len(source) if max_examples is None else min(max_examples, len(source))
  if label_key is not None and class_names is None:
    class_names = source.dataset_info.features[label_key].names
  template = np.random.default_rng(seed).integers(len(templates), size=n)
  out = {"image": np.zeros((n, image_size, image_size, 3), np.uint8),
         "tokens": np.zeros((n, max_length), np.int32)}
  scalars: list[str] = []
  for start, chunk in _records(source, n, batch_size):
    if start == 0 and chunk:  # the first record decides which scalars to keep
      scalars = [k for k, v in chunk[0].items()
                 if k not in (image_key, caption_key) and _scalar(v)]
      out.update({k: np.zeros(n, np.asarray(chunk[0][k]).dtype) for k in scalars})
    for i, record in enumerate(chunk, start):
      out["image"][i] = _image(record[image_key], image_size)
      if label_key is None:
        text = _text(_get(record, caption_key), caption_index)
      else:
        text = templates[template[i]].format(class_names[int(record[label_key])])
      out["tokens"][i] = encode(tokenizer, text, max_length)
      for k in scalars:
        out[k][i] = record[k]
  for k in scalars:  # int32 (what JAX uses without x64) where values fit
    v = out[k]
    if v.dtype.kind in "iu" and v.size and v.min() >= -2**31 and v.max() < 2**31:
      out[k] = v.astype(np.int32)
  return out


def to_federated(arrays: Mapping[str, np.ndarray], client_ids: np.ndarray,
                 num_clients: int) -> federated.FederatedData:
  """Packs loaded arrays by owner (see :func:`federated.pack`)."""
  return federated.pack(arrays, client_ids, num_clients)
