"""Real image-caption data from Debian packages, as local TFDS builders.

Built like :class:`~fedjax_mm.data.tfds.ShapesWorld`: ``array_record`` files,
no TensorFlow, no network. Install the sources once with
``scripts/setup_real_data.sh`` (apt-get, root), then :func:`load_pairs`.

* :class:`TuxPaintStamps` (package ``tuxpaint-stamps-default``, GPL-2): the
  clip-art stamps of Tux Paint. The caption is the first line of the ``.txt``
  next to each image ("A red kangaroo."; the other lines are translations,
  ``fr.utf8=...``); the label is the top-level directory (animals, food, ...).
  ``symbols/`` (letters, digits, coins) is skipped, and so are SVG-only
  stamps: Pillow cannot rasterize SVG, and librsvg comes only with the
  ``tuxpaint`` program. Transparent PNGs are composited onto white, padded to
  a square and resized; the split is a hash of the path (~90/10).
* :class:`FashionMnistCaptions` (package ``dataset-fashion-mnist``, the
  original IDX files): 28x28x1 images, captions from templates over the
  class names ("A black and white picture of an ankle boot.").
* :func:`load_pairs` reads either, or a TFDS dataset by name through
  ``tfds.data_source`` (``fashion_mnist``, ``cifar10``: template captions;
  ``coco_captions``: its first caption), into numpy arrays and raw strings.

In tuxpaint-stamps-default 2022.06.04: 952 ``.txt`` descriptions, 249 under
``symbols/``; of the other 703, 538 have a PNG (the dataset: 491 train, 47
test, 15 of the 16 categories non-empty; 2.7 MB at 64x64, 7-19 s), 163 only
an SVG, 2 no image. Fashion-MNIST: 60,000 + 10,000 rows, 48 MB, 48-72 s to
prepare and ~1 ms a row to load on 2 busy cores (PNG decoding in tfds).

References:
  Tux Paint, https://tuxpaint.org (New Breed Software and contributors).
  Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms", 2017; arXiv:1708.07747.
"""

# fdt's record helpers (_records, _image, _get, _text) are shared, not copied.
# pylint: disable=protected-access
from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from fedjax_mm.data import tfds as fdt

STAMPS_DIR = "/usr/share/tuxpaint/stamps"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SETUP = "sudo scripts/setup_real_data.sh"
STAMP_CATEGORIES = ("animals", "cartoon", "clothes", "food", "hobbies", "household",
                    "medical", "military", "naturalforces", "people", "plants",
                    "seasonal", "space", "sports", "town", "vehicles")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                   "Shirt", "Sneaker", "Bag", "Ankle boot")  # tfds fashion_mnist's names
TEMPLATES = ("A photo of {}.", "A picture of {}.", "An image of {}.")
FASHION_TEMPLATES = ("A photo of {}.", "A black and white picture of {}.",
                     "A grayscale photo of {}.", "A small product photo of {}.",
                     "A low resolution image of {}.")
_NOUNS = {"T-shirt/top": "T-shirt", "Trouser": "pair of trousers"}
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# A vowel letter sounding like a consonant ("a unicorn"), a silent h ("an hour").
_CONSONANT_SOUND = ("eu", "one", "once", "uni", "use", "usu", "uti", "ubi")
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def with_article(noun: str) -> str:
  """``noun`` after "a" or "an" ("an ankle boot", "a T-shirt", "a unicorn")."""
  w = noun.lower()
  vowel = bool(w) and w[0] in "aeiou" and not w.startswith(_CONSONANT_SOUND)
  return ("an " if vowel or w.startswith(_SILENT_H) else "a ") + noun


def class_noun(name: str) -> str:
  """A class name as a caption noun ("Ankle boot" -> "ankle boot")."""
  return _NOUNS.get(name, name.replace("_", " ").lower())


def template_captions(labels: Sequence[int], class_names: Sequence[str],
                      templates: Sequence[str], picks: np.ndarray) -> list[str]:
  """``templates[picks[i]]`` filled with the article and noun of ``labels[i]``."""
  return [templates[t].format(with_article(class_noun(class_names[int(y)])))
          for t, y in zip(picks, labels)]


def template_picks(seed: int, count: int, num_templates: int) -> np.ndarray:
  """Template of each of ``count`` rows; slice it to read fewer (stable rows)."""
  return np.random.default_rng(seed).integers(num_templates, size=count)


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """An IDX file (the MNIST format, gzipped or not) as a native-endian array.

  Layout: two zero bytes, a type code, the number of dimensions, each
  dimension as a big-endian uint32, then the big-endian data.
  """
  raw = pathlib.Path(path).read_bytes()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
    raise ValueError(f"{path}: not an IDX file (header {raw[:4]!r})")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", raw[3], 4))
  dtype = np.dtype(_IDX_TYPES[raw[2]])
  data = np.frombuffer(raw, dtype, int(np.prod(shape)), 4 + 4 * len(shape))
  return data.reshape(shape).astype(dtype.newbyteorder("="))


def _idx_path(source_dir: str, stem: str) -> pathlib.Path | None:
  for name in (stem, stem + ".gz"):
    if (path := pathlib.Path(source_dir, name)).is_file():
      return path
  return None


def stamp_files(source_dir: str) -> tuple[list[tuple[str, str, str]], collections.Counter]:
  """``(png path relative to source_dir, caption, category)`` of every usable stamp.

  Sorted by path; the counter says how many descriptions were skipped and why.
  """
  root, found, skipped = pathlib.Path(source_dir), [], collections.Counter()
  for txt in sorted(root.rglob("*.txt")):
    rel = txt.relative_to(root)
    if len(rel.parts) < 2 or rel.parts[0] == "symbols":  # letters, digits, coins
      skipped["symbols" if len(rel.parts) > 1 else "no_category"] += 1
      continue
    if not txt.with_suffix(".png").is_file():
      skipped["svg_only" if txt.with_suffix(".svg").is_file() else "no_image"] += 1
      continue
    lines = txt.read_text(encoding="utf-8-sig").splitlines()
    if not lines or not lines[0].strip():
      skipped["no_caption"] += 1
      continue
    if rel.parts[0] not in STAMP_CATEGORIES:  # a new release: extend the label list
      raise ValueError(f"{txt}: category {rel.parts[0]!r} not in {STAMP_CATEGORIES}")
    found.append((rel.with_suffix(".png").as_posix(), lines[0].strip(), rel.parts[0]))
  return found, skipped


def stamp_split(relative_path: str, test_percent: int) -> str:
  """"test" for ~``test_percent``% of paths, by hash: stable as stamps come and go."""
  bucket = int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) % 100
  return "test" if bucket < test_percent else "train"


def stamp_image(path: str | os.PathLike, size: int) -> np.ndarray:
  """uint8 ``[size, size, 3]``: composited onto white, padded square, resized."""
  with Image.open(path) as image:
    rgba = image.convert("RGBA")  # P/LA/RGB alike; P keeps its transparency
  # Composite before resizing, so transparent pixels' colour cannot bleed in.
  rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba).convert("RGB")
  side = max(rgb.size)
  canvas = Image.new("RGB", (side, side), (255, 255, 255))
  canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
  return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))


def _png(image: np.ndarray) -> bytes:
  """PNG bytes of HxW or HxWx3 (tfds' own encoder needs TensorFlow; bytes pass)."""
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


def _digest(*fields: Any) -> str:
  return hashlib.sha1(repr(fields).encode()).hexdigest()[:8]


@dataclasses.dataclass(eq=False)
class StampsConfig(tfds.core.BuilderConfig):
  """Make one with :func:`stamps_config` (its name is unique to its content)."""

  source_dir: str = STAMPS_DIR
  image_size: int = 64
  test_percent: int = 10


@dataclasses.dataclass(eq=False)
class FashionConfig(tfds.core.BuilderConfig):
  """Make one with :func:`fashion_config` (its name is unique to its content)."""

  source_dir: str = FASHION_DIR
  templates: tuple[str, ...] = FASHION_TEMPLATES
  seed: int = 0


def stamps_config(source_dir: str = STAMPS_DIR, image_size: int = 64,
                  test_percent: int = 10) -> StampsConfig:
  source_dir = os.path.abspath(source_dir)
  return StampsConfig(name=f"s{image_size}_{_digest(source_dir, test_percent)}",
                      source_dir=source_dir, image_size=image_size, test_percent=test_percent)


def fashion_config(source_dir: str = FASHION_DIR, templates: Sequence[str] = FASHION_TEMPLATES,
                   seed: int = 0) -> FashionConfig:
  source_dir, templates = os.path.abspath(source_dir), tuple(templates)
  return FashionConfig(name=f"seed{seed}_{_digest(source_dir, templates)}",
                       source_dir=source_dir, templates=templates, seed=seed)


def check_source(name: str, source_dir: str) -> None:
  """Raises FileNotFoundError naming the set-up command if the source is missing."""
  if name == "tux_paint_stamps":
    missing = [] if pathlib.Path(source_dir).is_dir() else [source_dir]
  else:
    missing = [s for pair in _FASHION_FILES.values() for s in pair
               if _idx_path(source_dir, s) is None]
  if missing:
    raise FileNotFoundError(
        f"{name}: source files missing under {source_dir}: {missing}. Install them with "
        f"`{SETUP}` (apt-get install tuxpaint-stamps-default dataset-fashion-mnist), "
        "or pass source_dir=")


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by the builders below: one feature layout, source order kept."""

  VERSION = tfds.core.Version("1.0.0")
  HOMEPAGE = DESCRIPTION = ""
  LABELS: tuple[str, ...] = ()

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)  # see ShapesWorld.code_path: tfds' lookup fails here

  def _image_shape(self) -> tuple[int, int, int]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, homepage=self.HOMEPAGE, description=self.DESCRIPTION,
        disable_shuffling=True,  # row i of a split is the i-th source item
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=self._image_shape()),
            "caption": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=self.LABELS),
            "source": tfds.features.Text()}))  # path or file:index of the item


class TuxPaintStamps(_LocalBuilder):
  """Tux Paint stamps: clip art with one English sentence each."""

  BUILDER_CONFIGS = [stamps_config()]
  HOMEPAGE, LABELS = "https://tuxpaint.org", STAMP_CATEGORIES
  DESCRIPTION = "Tux Paint stamps (GPL-2) on white, with their English descriptions."

  def _image_shape(self) -> tuple[int, int, int]:
    return (self.builder_config.image_size,) * 2 + (3,)

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # read from the installed package, not downloaded
    config = self.builder_config
    check_source(self.name, config.source_dir)
    found, skipped = stamp_files(config.source_dir)
    logging.info("tux_paint_stamps: %d stamps; skipped %s", len(found), dict(skipped))
    splits = {"train": [], "test": []}
    for stamp in found:
      splits[stamp_split(stamp[0], config.test_percent)].append(stamp)
    return {k: self._generate_examples(v) for k, v in splits.items()}

  def _generate_examples(self, stamps: list[tuple[str, str, str]]):
    config = self.builder_config
    for rel, caption, category in stamps:
      image = stamp_image(os.path.join(config.source_dir, rel), config.image_size)
      yield rel, {"image": _png(image), "caption": caption, "label": category,
                  "source": rel}


class FashionMnistCaptions(_LocalBuilder):
  """Fashion-MNIST from its IDX files, with template captions."""

  BUILDER_CONFIGS = [fashion_config()]
  HOMEPAGE, LABELS = "https://github.com/zalandoresearch/fashion-mnist", FASHION_CLASSES
  DESCRIPTION = "Fashion-MNIST (Xiao et al. 2017) with template captions."

  def _image_shape(self) -> tuple[int, int, int]:
    return (28, 28, 1)  # as tfds' fashion_mnist

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager
    check_source(self.name, self.builder_config.source_dir)
    return {split: self._generate_examples(*files) for split, files in _FASHION_FILES.items()}

  def _generate_examples(self, image_stem: str, label_stem: str):
    config = self.builder_config
    images = read_idx(_idx_path(config.source_dir, image_stem))
    labels = read_idx(_idx_path(config.source_dir, label_stem))
    if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
      raise ValueError(f"{image_stem}: images {images.shape}, labels {labels.shape}")
    texts = template_captions(labels, FASHION_CLASSES, config.templates,
                              template_picks(config.seed, len(labels), len(config.templates)))
    for i, (image, label, text) in enumerate(zip(images, labels, texts)):
      yield i, {"image": _png(image), "caption": text, "label": int(label),
                "source": f"{image_stem}:{i}"}


BUILDERS = {"tux_paint_stamps": (TuxPaintStamps, stamps_config),
            "fashion_mnist_captions": (FashionMnistCaptions, fashion_config)}


def build_real_dataset(name: str, data_dir: str | os.PathLike, source_dir: str | None = None,
                       **options: Any) -> tfds.core.DatasetBuilder:
  """Prepares a local builder into ``data_dir`` (a no-op when already there).

  Args:
    name: "tux_paint_stamps" or "fashion_mnist_captions".
    data_dir: TFDS data directory.
    source_dir: the installed files; default the Debian packages' location.
    **options: config fields (stamps: ``image_size``, ``test_percent``;
      Fashion-MNIST: ``templates``, ``seed``).

  Returns:
    The prepared builder; ``builder.as_data_source(split)`` reads it.

  Raises:
    FileNotFoundError: the source is missing (the message names the command).
  """
  if name not in BUILDERS:
    raise ValueError(f"name must be one of {sorted(BUILDERS)}, got {name!r}")
  cls, make_config = BUILDERS[name]
  config = make_config(**({} if source_dir is None else {"source_dir": source_dir}), **options)
  # tfds wants the class's own object for a config named like one of BUILDER_CONFIGS.
  config = {c.name: c for c in cls.BUILDER_CONFIGS}.get(config.name, config)
  builder = cls(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
  if not builder.is_prepared():
    check_source(name, config.source_dir)  # before tfds makes any directory
    builder.download_and_prepare()
  return builder


def _caption_key(features: Any) -> str | None:
  if "caption" in features:
    return "caption"
  if "captions" in features:  # coco_captions: Sequence({"text", "id"})
    inner = getattr(features["captions"], "feature", None)
    return "captions/text" if isinstance(inner, tfds.features.FeaturesDict) else "captions"
  return None


def load_pairs(name: str, split: str, data_dir: str | os.PathLike | None, *, image_size: int,
               limit: int | None = None, templates: Sequence[str] | None = None,
               seed: int = 0, source_dir: str | None = None, caption_index: int = 0,
               batch_size: int = 512) -> dict[str, np.ndarray]:
  """Images, raw caption strings and labels of a local builder or a TFDS dataset.

  Args:
    name: a key of :data:`BUILDERS` (prepared on first use); a TFDS name
      read with ``tfds.data_source`` (downloads and prepares unless present;
      a version, "coco_captions/2014:1.1.0", reads present files without the
      builder's code, which may import TensorFlow); or the directory of a
      prepared dataset (``builder_from_directory``; ``data_dir`` unused).
    split: e.g. "train", "test", "train[:10%]".
    data_dir: TFDS data directory.
    image_size: output side S (center crop and resize where needed).
    limit: read only the first this many rows.
    templates: captions for image-label data (one ``{}`` for "a/an noun");
      default :data:`FASHION_TEMPLATES` for Fashion-MNIST, else
      :data:`TEMPLATES`. Rejected for data with caption text.
    seed: draws the templates.
    source_dir: a local builder's source (default the apt location).
    caption_index: which caption where a record has several (coco: ~5).
    batch_size: records per read.

  Returns:
    ``{"image": uint8 [N, S, S, 3], "caption": object [N] of str,
    "label": int32 [N] (-1 without a label)}``.
  """
  if name in BUILDERS:
    options = {}
    if name == "fashion_mnist_captions":  # templates are drawn at build time
      options = {"seed": seed, **({} if templates is None else {"templates": templates})}
      templates = None
    source = build_real_dataset(name, data_dir, source_dir, **options).as_data_source(split)
  elif os.sep in name and os.path.isdir(name):
    source = tfds.builder_from_directory(name).as_data_source(split)
  else:
    source = tfds.data_source(name, split=split, data_dir=os.fspath(data_dir))
  features = source.dataset_info.features
  caption_key = _caption_key(features)
  labelled = "label" in features and isinstance(features["label"], tfds.features.ClassLabel)
  if caption_key is None and not labelled:
    raise ValueError(f"{name}: no caption text and no ClassLabel 'label' feature")
  if caption_key is not None and templates is not None:
    raise ValueError(f"{name} has caption text; templates are for image-label data")
  n = len(source) if limit is None else min(limit, len(source))
  out = {"image": np.zeros((n, image_size, image_size, 3), np.uint8),
         "caption": np.empty(n, object), "label": np.full(n, -1, np.int32)}
  for start, chunk in fdt._records(source, n, batch_size):
    for i, record in enumerate(chunk, start):
      out["image"][i] = fdt._image(record["image"], image_size)
      if labelled:
        out["label"][i] = record["label"]
      if caption_key is not None:
        out["caption"][i] = fdt._text(fdt._get(record, caption_key), caption_index)
  if caption_key is None:
    if templates is None:
      templates = FASHION_TEMPLATES if name.startswith("fashion_mnist") else TEMPLATES
    picks = template_picks(seed, len(source), len(templates))[:n]
    out["caption"][:] = template_captions(out["label"], features["label"].names,
                                          templates, picks)
  return out
