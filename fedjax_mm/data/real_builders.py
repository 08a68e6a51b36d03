"""Local TFDS builders over the apt sources (``array_record``, no TensorFlow).

Holds :class:`TuxPaintStamps` and :class:`FashionMnistCaptions` (one shared
feature layout, :class:`_LocalBuilder`), their configs
(:class:`StampsConfig` / :func:`stamps_config`, :class:`FashionConfig` /
:func:`fashion_config`, named by content), :data:`BUILDERS` and
:func:`build_real_dataset`, which prepares one into a ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

# apt_sources' IDX file table and lookup are shared, not copied.
from fedjax_mm.data.apt_sources import _FASHION_FILES
from fedjax_mm.data.apt_sources import _idx_path
from fedjax_mm.data.apt_sources import FASHION_CLASSES
from fedjax_mm.data.apt_sources import FASHION_DIR
from fedjax_mm.data.apt_sources import STAMP_CATEGORIES
from fedjax_mm.data.apt_sources import STAMPS_DIR
from fedjax_mm.data.apt_sources import check_source
from fedjax_mm.data.apt_sources import read_idx
from fedjax_mm.data.apt_sources import stamp_files
from fedjax_mm.data.apt_sources import stamp_image
from fedjax_mm.data.apt_sources import stamp_split
from fedjax_mm.data.caption_templates import FASHION_TEMPLATES
from fedjax_mm.data.caption_templates import template_captions
from fedjax_mm.data.caption_templates import template_picks


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
