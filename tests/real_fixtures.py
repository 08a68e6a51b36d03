"""Tiny on-disk sources for the real-data builders, shared by the real-data tests.

Writers only (no pytest fixtures): a Tux Paint stamps tree in the package's
layout and Fashion-MNIST IDX files, small enough to build in well under a
second, so no test reads the apt files under /usr/share or the network.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# The real layout: <category>/<...>/<name>.png next to <name>.txt whose first line
# is English, the others translations. Paths chosen so the 10% hash split has both.
STAMPS = {"animals/birds/blackbird.png": ("RGBA", "A blackbird."),
          "food/fruit/cherimoya.png": ("RGB", "A cherimoya fruit."),
          "animals/hen.png": ("P", "A hen.")}


def write_stamp(root: Path, rel: str, mode: str, caption: str) -> None:
  path = root / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  path.with_suffix(".txt").write_text(f"{caption}\nfr.utf8=Traduction.\nde.utf8=X.\n",
                                      encoding="utf-8")
  # 8 wide, 4 high: left half opaque red, right half transparent *black*.
  rgba = np.zeros((4, 8, 4), np.uint8)
  rgba[:, :4] = (255, 0, 0, 255)
  image, options = Image.fromarray(rgba, "RGBA"), {}
  if mode == "RGB":
    image = image.convert("RGB")  # no alpha: the black half stays black
  elif mode == "P":  # a palette whose black entry is marked transparent
    image = image.convert("RGB").quantize(colors=2)
    options["transparency"] = int(np.asarray(image)[0, 7])
  image.save(path, **options)


def write_stamps(root: Path) -> Path:
  """:data:`STAMPS` (2 train, 1 test) plus three files the builder must skip."""
  for rel, (mode, caption) in STAMPS.items():
    write_stamp(root, rel, mode, caption)
  write_stamp(root, "symbols/math/plus.png", "RGBA", "A plus sign.")  # skipped
  (root / "plants").mkdir()
  (root / "plants/tree.svg").write_text("<svg/>")  # SVG only: skipped
  (root / "plants/tree.txt").write_text("A tree.\n")
  (root / "animals/birds/blackbird_mirror.png").write_bytes(
      (root / "animals/birds/blackbird.png").read_bytes())  # no .txt: not a stamp
  return root


def idx(array: np.ndarray, type_code: int) -> bytes:
  """``array`` in the IDX format (MNIST's): header, big-endian dims and data."""
  header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion(root: Path, splits: dict[str, tuple[np.ndarray, Sequence[int]]]) -> Path:
  """Fashion-MNIST IDX files: ``{"train" | "t10k": (uint8 [N, 28, 28], labels)}``.

  The train files are gzipped and the test files plain, as both occur; each
  split's images are also saved as ``<stem>.npy`` for comparisons.
  """
  for stem, (images, labels) in splits.items():
    files = {f"{stem}-images-idx3-ubyte": idx(np.asarray(images, np.uint8), 0x08),
             f"{stem}-labels-idx1-ubyte": idx(np.asarray(labels, np.uint8), 0x08)}
    for name, data in files.items():
      if stem == "train":
        (root / f"{name}.gz").write_bytes(gzip.compress(data))
      else:
        (root / name).write_bytes(data)
    np.save(root / f"{stem}.npy", images)
  return root
