"""The command line's flag parsing, help and user errors, each said in one line.

``ml_collections``' config flag reports a mistyped or moved field, a missing
config file or a broken one with a 40-50-line traceback. :func:`parse` runs
the same parser and turns those into one line naming the field or file and
what to do (``config.server.optimizer: moved to config.server.kind``), and
``--help`` lists the config file's own docstring (its presets), every
config field with its value, and each registry's parts with their options.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from typing import Sequence

import ml_collections
from absl import flags

from fedjax_mm import config_files, configuration
from fedjax_mm.aggregation import AGGREGATORS, PREPROCESSORS, WRAPPERS
from fedjax_mm.algorithms import ALGORITHMS
from fedjax_mm.server import SERVER
from fedjax_mm.setups import DATASETS

HELP_FLAGS = ("--help", "-h", "--helpfull", "-?", "--helpshort")


class UsageError(Exception):
  """A user error on the command line; its message is one line."""


def _config_arg(argv: Sequence[str]) -> str | None:
  """The last ``--config`` given (absl keeps the last one too)."""
  found = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      found = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      found = argv[i + 1]
  return found


def _overrides(argv: Sequence[str]) -> list[str]:
  out = []
  for arg in argv:
    if arg.startswith("--config.") and "=" in arg:
      out.append(arg[len("--config."):].split("=", 1)[0])
    elif arg.startswith("--config.") and "=" not in arg:
      out.append(arg[len("--config."):])
  return out


def _fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
  out = {}
  for key in sorted(config.keys()):
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of ``--config=<file>[:arg]``, or :class:`UsageError` in one line."""
  try:
    return config_files.load(spec)
  except FileNotFoundError as e:
    raise UsageError(f"--config: {e}") from None
  except Exception as e:  # a broken file: its own error, in one line
    raise UsageError(f"--config={spec}: the file failed to load: "
                     f"{type(e).__name__}: {e}".splitlines()[0]) from None


def unknown_field(config: ml_collections.ConfigDict, path: str) -> str | None:
  """One line for a ``--config.<path>`` override that names no field, else None."""
  node = config
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      moved = configuration.moved_message(path)
      if moved:
        return moved
      close = difflib.get_close_matches(path, list(_fields(config)), n=1, cutoff=0.6)
      hint = f"; did you mean config.{close[0]}?" if close else \
          " (--help lists the fields)"
      return f"config.{path}: no such field{hint}"
    node = node[part]
  return None


def parse(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with one-line errors and a config-aware ``--help``.

  Returns:
    The remaining positional arguments (as absl's parser does).

  Raises:
    SystemExit: after printing help (code 0) or a one-line error (code 2).
  """
  argv = list(argv)
  try:
    if any(a in HELP_FLAGS for a in argv[1:]):
      print(help_text(_config_arg(argv)))
      raise SystemExit(0)
    return _parse(argv)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def _parse(argv: list[str]) -> list[str]:
  spec = _config_arg(argv)
  if spec is None:
    raise UsageError("--config: required (e.g. --config=configs/synthetic.py); --help "
                     "lists the fields")
  config = load_config(spec)
  for path in _overrides(argv):
    message = unknown_field(config, path)
    if message:
      raise UsageError(message)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise UsageError(str(e).splitlines()[0]) from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise UsageError(f"a --config override could not be applied: {e}") from None


def help_text(spec: str | None) -> str:
  """``--help``: the flags, the config file's docstring and fields, and every registry."""
  lines = ["usage: python -m fedjax_mm.main --config=CONFIG_FILE[:PRESET] --workdir=DIR "
           "[--config.FIELD=VALUE ...] [--noprogress]",
           "  --workdir: run directory (created; a run there is resumed)",
           "  --config.FIELD=VALUE overrides any field listed below"]
  if spec is None:
    lines.append("(give --config=FILE with --help to list that file's fields and presets; "
                 f"config files: {sorted(os.listdir('configs')) if os.path.isdir('configs') else []})")
  else:
    file = spec.split(".py:")[0] + (".py" if ".py:" in spec else "")
    try:
      config = load_config(spec)
    except UsageError as e:
      lines.append(f"({e})")
      config = None
    if config is not None:
      doc = _module_doc(file)
      if doc:
        lines += ["", f"{file}:", *("  " + line for line in doc.splitlines())]
      lines += ["", "fields (current values):"]
      lines += [f"  config.{k} = {v!r}" for k, v in _fields(config).items()]
  lines += ["", "datasets (config.data.name):"]
  lines += [f"  {d.name:<18} {d.label}: {d.summary}" for d in DATASETS.values()]
  for registry, path, selector in (
      (ALGORITHMS, "algorithm", "kind"), (PREPROCESSORS, "preprocess", "chain"),
      (AGGREGATORS, "aggregation", "kind"), (WRAPPERS, "wrap", "chain"),
      (SERVER, "server", "kind")):
    lines += ["", *registry.describe(path, selector)]
  return "\n".join(lines)


def _module_doc(file: str) -> str:
  try:
    with open(file) as f:
      return ast.get_docstring(ast.parse(f.read())) or ""
  except (OSError, SyntaxError):
    return ""
