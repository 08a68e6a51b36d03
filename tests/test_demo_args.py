"""The demos' shared argument guard (experiments/fedma_demo.parse_methods)."""

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import fedma_demo  # noqa: E402


def test_parse_methods_keeps_order_and_rejects_unknown_names(capsys):
  parser = argparse.ArgumentParser(prog="demo")
  assert fedma_demo.parse_methods(parser, "scaffold,fedavg") == ["scaffold", "fedavg"]
  with pytest.raises(SystemExit):
    fedma_demo.parse_methods(parser, "fedavg,fedcmp_typo")
  err = capsys.readouterr().err
  assert "--methods: 'fedcmp_typo' is not one of" in err and "'fednova'" in err
