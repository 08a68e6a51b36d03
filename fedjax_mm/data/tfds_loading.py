"""Reading image-caption TFDS sources into packed numpy arrays.

Holds the word-level tokenizer for real captions (:func:`words`,
:func:`build_tokenizer`, :func:`encode`), the record helpers shared with
:mod:`fedjax_mm.data.real_sources` (``_get`` nested keys, ``_text``,
``_image`` crop and resize, ``_records`` batched reads), and the loaders:
:func:`read_captions` (text for a vocabulary), :func:`load_image_caption`
(``image`` uint8 ``[N, S, S, 3]``, ``tokens`` int32 ``[N, L]`` and every
integer/bool scalar feature) and :func:`to_federated`. Sources are anything
with ``len`` and ``[i]``, e.g. ``builder.as_data_source()[split]``; no
TensorFlow. Re-exported by :mod:`fedjax_mm.data.tfds`.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Mapping, Sequence

import numpy as np

from fedjax_mm.data import federated, world
from fedjax_mm.data import tokenizer as tok

DEFAULT_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}")


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
