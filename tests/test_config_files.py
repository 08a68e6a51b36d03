"""Tests for fedjax_mm.config_files: configs/*.py loaded by path, as the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections
import pytest

from fedjax_mm import config_files

ROOT = Path(__file__).parents[1]


def test_synthetic_default_and_preset():
  default = config_files.load(ROOT / "configs/synthetic.py")
  assert isinstance(default, ml_collections.ConfigDict)
  assert default.data.num_clients == 30 and default.clients_per_round == 10
  preset = config_files.load(ROOT / "configs/synthetic.py", "1000")
  assert preset.data.num_clients == 1000 and preset.clients_per_round == 100


def test_cli_form_with_colon_argument():
  config = config_files.load(f"{ROOT}/configs/synthetic.py:1000")
  assert config.data.num_clients == 1000
  assert config_files.load(ROOT / "configs/synthetic.py:1000").data.num_clients == 1000


def test_relative_path_from_the_repository_root(monkeypatch):
  monkeypatch.chdir(ROOT)
  assert config_files.load("configs/synthetic.py:100").data.num_clients == 100


def test_fedma_demo_loads_its_base_config_and_overrides():
  demo = config_files.load(ROOT / "configs/fedma_demo.py")
  base = config_files.load(ROOT / "configs/fedma.py")
  assert demo.num_rounds == 30 and base.num_rounds == 60
  assert demo.model.projector.pool_to == 4
  assert demo.data.partition.kind == "dirichlet" and demo.data.partition.alpha == 0.1
  iid = config_files.load(ROOT / "configs/fedma_demo.py:iid")
  assert iid.data.partition.kind == "iid" and iid.num_rounds == 30


def test_missing_file_is_a_clear_error(tmp_path):
  missing = tmp_path / "nope.py"
  with pytest.raises(FileNotFoundError, match="config file not found: .*nope.py"):
    config_files.load(missing)
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_files.load(f"{missing}:1000")


def test_argument_given_twice_and_no_get_config(tmp_path):
  with pytest.raises(ValueError, match="given twice"):
    config_files.load(ROOT / "configs/synthetic.py:1000", "30")
  empty = tmp_path / "empty.py"
  empty.write_text("X = 1\n")
  with pytest.raises(ValueError, match="get_config"):
    config_files.load(os.fspath(empty))
