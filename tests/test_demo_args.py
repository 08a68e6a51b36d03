"""The experiments' method-list arguments (fedjax_mm.experiment.methods)."""

import argparse

import pytest

from fedjax_mm.experiment import methods


def test_parse_methods_keeps_order_and_rejects_unknown_names():
  assert methods.parse_methods("scaffold,fedavg") == ["scaffold", "fedavg"]
  assert methods.parse_methods("") == []
  with pytest.raises(ValueError, match=r"must be comma-separated names of \(.*'fednova'.*\), "
                                       r"got 'fedcmp_typo'"):
    methods.parse_methods("fedavg,fedcmp_typo")
  with pytest.raises(ValueError, match="got 'fedavg'"):
    methods.parse_methods("cra_only,fedavg", methods.ABLATIONS)


def test_a_bad_methods_flag_exits_with_one_line(capsys):
  parser = argparse.ArgumentParser(prog="demo")
  parser.add_argument("--methods", type=methods.methods_arg, default="fedavg")
  assert parser.parse_args(["--methods", "fednova,fedavg"]).methods == ["fednova", "fedavg"]
  with pytest.raises(SystemExit):
    parser.parse_args(["--methods", "fedavg,fedcmp_typo"])
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("demo: error: argument --methods: must be comma-separated names")
  assert err[-1].endswith("got 'fedcmp_typo'")
