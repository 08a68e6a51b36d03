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

The sources' readers live in :mod:`fedjax_mm.data.apt_sources`, the template
captions in :mod:`fedjax_mm.data.caption_templates`, the builders in
:mod:`fedjax_mm.data.real_builders`; all are re-exported here.

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

import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from fedjax_mm.data import tfds as fdt
# Re-exported: callers read the sources, templates and builders from here.
from fedjax_mm.data.apt_sources import FASHION_CLASSES  # noqa: F401
from fedjax_mm.data.apt_sources import FASHION_DIR  # noqa: F401
from fedjax_mm.data.apt_sources import SETUP  # noqa: F401
from fedjax_mm.data.apt_sources import STAMP_CATEGORIES  # noqa: F401
from fedjax_mm.data.apt_sources import STAMPS_DIR  # noqa: F401
from fedjax_mm.data.apt_sources import check_source  # noqa: F401
from fedjax_mm.data.apt_sources import read_idx  # noqa: F401
from fedjax_mm.data.apt_sources import stamp_files  # noqa: F401
from fedjax_mm.data.apt_sources import stamp_image  # noqa: F401
from fedjax_mm.data.apt_sources import stamp_split  # noqa: F401
from fedjax_mm.data.caption_templates import FASHION_TEMPLATES
from fedjax_mm.data.caption_templates import TEMPLATES
from fedjax_mm.data.caption_templates import class_noun  # noqa: F401
from fedjax_mm.data.caption_templates import template_captions
from fedjax_mm.data.caption_templates import template_picks
from fedjax_mm.data.caption_templates import with_article  # noqa: F401
from fedjax_mm.data.real_builders import BUILDERS
from fedjax_mm.data.real_builders import FashionConfig  # noqa: F401
from fedjax_mm.data.real_builders import FashionMnistCaptions  # noqa: F401
from fedjax_mm.data.real_builders import StampsConfig  # noqa: F401
from fedjax_mm.data.real_builders import TuxPaintStamps  # noqa: F401
from fedjax_mm.data.real_builders import build_real_dataset
from fedjax_mm.data.real_builders import fashion_config  # noqa: F401
from fedjax_mm.data.real_builders import stamps_config  # noqa: F401


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
