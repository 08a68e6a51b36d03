"""The installed sources of the real data: Debian-package files, no network.

Holds their locations (:data:`STAMPS_DIR`, :data:`FASHION_DIR`, installed by
:data:`SETUP`), their label names (:data:`STAMP_CATEGORIES`,
:data:`FASHION_CLASSES`), the readers (:func:`read_idx` for Fashion-MNIST's
IDX files; :func:`stamp_files`, :func:`stamp_split`, :func:`stamp_image` for
the Tux Paint stamps) and :func:`check_source`, which names the set-up
command when files are missing.

References:
  Tux Paint, https://tuxpaint.org (New Breed Software and contributors).
  Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms", 2017; arXiv:1708.07747.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import os
import pathlib

import numpy as np
from PIL import Image

STAMPS_DIR = "/usr/share/tuxpaint/stamps"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SETUP = "sudo scripts/setup_real_data.sh"
STAMP_CATEGORIES = ("animals", "cartoon", "clothes", "food", "hobbies", "household",
                    "medical", "military", "naturalforces", "people", "plants",
                    "seasonal", "space", "sports", "town", "vehicles")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                   "Shirt", "Sneaker", "Bag", "Ankle boot")  # tfds fashion_mnist's names
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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
