"""The command line's one-line errors and its config-aware --help, in-process.

(Subprocess runs of the same paths, exit code included, and of a flag that
absl itself refuses, are in test_cli.py: absl registers the override flags
once per process, so a good parse is tested there too.)
"""

import pytest
from absl import flags

from fedjax_mm import cli_flags, configuration
from fedjax_mm import main as _main  # noqa: F401  (defines --config, --workdir)

CONFIG = "configs/synthetic.py"


def _error(capsys, *args) -> str:
  with pytest.raises(SystemExit) as info:
    cli_flags.parse(["main", *args])
  assert info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


@pytest.fixture(autouse=True)
def _fresh_flags():
  yield
  flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("arg,expected", [
    ("--config.server.optimizer=fedadam", "error: config.server.optimizer: moved to "
     "config.server.kind"),
    ("--config.algorithm.name=scaffold", "moved to config.algorithm.kind"),
    ("--config.aggregation.clip_norm=1.0", "moved to config.preprocess.chain=l2_clip"),
    ("--config.aggregation.trim_fraction=0.2",
     "moved to config.aggregation.trimmed_mean.trim_fraction"),
    ("--config.server.fedadam.tauu=0.1",
     "config.server.fedadam.tauu: no such field; did you mean config.server.fedadam.tau?"),
    ("--config.num_round=3", "config.num_round: no such field; did you mean "
     "config.num_rounds?"),
    ("--config.zzz=3", "config.zzz: no such field (--help lists the fields)"),
])
def test_bad_overrides_fail_with_one_line(capsys, arg, expected):
  assert expected in _error(capsys, f"--config={CONFIG}", "--workdir=/tmp/unused", arg)


def test_missing_and_broken_config_files_fail_with_one_line(capsys, tmp_path):
  assert "config file not found: 'nope.py'" in _error(capsys, "--config=nope.py")
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return 1 / 0\n")
  err = _error(capsys, f"--config={broken}")
  assert "the file failed to load: ZeroDivisionError: division by zero" in err
  assert "--config: required" in _error(capsys, "--workdir=/tmp/x")


def test_help_lists_presets_fields_and_every_registered_part(capsys):
  with pytest.raises(SystemExit) as info:
    cli_flags.parse(["main", "--help", "--config=configs/fedma.py:iid"])
  assert info.value.code == 0
  text = capsys.readouterr().out
  assert "configs/fedma.py:missing" in text               # the file's presets
  assert "config.data.partition.kind = 'iid'" in text     # fields, with the preset applied
  for path in ("config.aggregation.krum.num_byzantine = 0",
               "config.algorithm.feddyn.alpha = 0.01",
               "config.preprocess.chain: comma-separated, in order",
               "config.server.opm.variant = 'stiefel'"):
    assert path in text
  assert "world" in text and "Fed-MA world" in text


def test_every_moved_field_is_refused_on_the_command_line(capsys):
  for old in configuration.MOVED:
    err = _error(capsys, f"--config={CONFIG}", f"--config.{old}=1")
    assert f"config.{old}: moved to config." in err
