"""The float32 cache of a dequantized GGUF: a folder of ``.npy`` files, checked on read.

Dequantizing SmolLM2's GGUF takes 3.5-8 s of numpy on a busy 2-core CPU; the
converted arrays are saved once next to the file, one ``.npy`` per flat param
name (``layers/q`` -> ``layers.q.npy``), and memory-mapped on later loads
(~0.05 s from the page cache). The folder is content-addressed: its name holds
the GGUF's SHA-256 prefix, size and :data:`CACHE_VERSION`.

:func:`read` checks the folder against the shapes the GGUF header implies
(every entry present, nothing extra, each a readable float32 ``.npy`` of the
right shape; a truncated file fails its memory map) and raises
:class:`DamagedCacheError` otherwise, so the loader can rebuild it instead of
crashing with a ``KeyError``. Bytes overwritten *inside* an array's data are not
detected: that would mean hashing 540 MB per load, the cost the cache avoids.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

# Bump when the array layout written to the cache changes.
CACHE_VERSION = 1


class DamagedCacheError(ValueError):
  """A cache folder is missing entries, or holds unreadable or wrong-shape files."""


def path(gguf_path: str | os.PathLike, digest: str) -> Path:
  """Where the cache of GGUF ``gguf_path`` (SHA-256 ``digest``) lives."""
  gguf_path = Path(gguf_path)
  key = f"{digest[:16]}-{gguf_path.stat().st_size}-v{CACHE_VERSION}"
  return gguf_path.with_name(f"{gguf_path.stem}.{key}.f32")


def _file(target: Path, name: str) -> Path:
  return target / f"{name.replace('/', '.')}.npy"


def write(target: Path, flat: dict[str, np.ndarray]) -> None:
  """Saves ``flat`` (name -> float32 array) as the cache folder ``target``."""
  # Fill a temp folder, then rename it: a killed process never leaves a partial
  # cache, and of concurrent writers (pytest-xdist) the first rename wins.
  tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
  try:
    for name, array in flat.items():
      np.save(_file(tmp, name), array)
    os.replace(tmp, target)
  except OSError:
    if not target.is_dir():
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def read(target: Path, shapes: dict[str, tuple[int, ...]], num_layers: int
         ) -> dict[str, np.ndarray]:
  """The cached arrays, checked against ``shapes`` (flat name -> full shape).

  Args:
    target: the cache folder.
    shapes: every entry the folder must hold, with its shape.
    num_layers: keep the first ``num_layers`` of each ``layers/...`` stack
      (copied); other entries stay read-only memory maps.

  Raises:
    DamagedCacheError: an entry is missing, extra, unreadable (truncated or a
      bad header), not float32 or of the wrong shape (the message names it).
  """
  found = {f.stem.replace(".", "/") for f in target.glob("*.npy")}
  if missing := sorted(shapes.keys() - found):
    raise DamagedCacheError(f"missing entries {missing}")
  if extra := sorted(found - shapes.keys()):
    raise DamagedCacheError(f"unexpected entries {extra}")
  flat = {}
  for name, shape in shapes.items():
    try:
      array = np.load(_file(target, name), mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:   # truncated data, damaged header
      raise DamagedCacheError(f"entry {name} is unreadable ({e})") from e
    if array.dtype != np.float32 or array.shape != tuple(shape):
      raise DamagedCacheError(f"entry {name} is {array.dtype}{list(array.shape)}, "
                              f"expected float32{list(shape)}")
    flat[name] = (np.ascontiguousarray(array[:num_layers]) if name.startswith("layers/")
                  else np.asarray(array))
  return flat
