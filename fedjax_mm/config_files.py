"""Loading run-config files (``configs/*.py``) by path, as the CLI does.

A config file is a Python file with ``get_config(arg=None)`` returning an
``ml_collections.ConfigDict``; it is not part of a package, so it is executed
from its path (``importlib``), never imported by module name. The CLI
(``--config=configs/x.py:arg``, via ``ml_collections.config_flags``) and every
script or test that needs a config go through the same convention; this
module is the one place outside the CLI that implements it.

  config = config_files.load("configs/synthetic.py:1000")
  config = config_files.load(ROOT / "configs/fedma.py", "iid")
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

_SUFFIX = ".py:"


def _split(path: str | os.PathLike) -> tuple[str, str | None]:
  """Splits the CLI form ``"configs/x.py:arg"`` into ``("configs/x.py", "arg")``.

  Args:
    path: a config file path, optionally followed by ``:arg`` after ``.py``.

  Returns:
    ``(file path, arg or None)``; a path without ``:arg`` gives ``None``.
  """
  text = os.fspath(path)
  cut = text.rfind(_SUFFIX)
  if cut < 0 or os.path.isfile(text):
    return text, None
  return text[:cut + len(_SUFFIX) - 1], text[cut + len(_SUFFIX):]


def load(path: str | os.PathLike, arg: str | None = None
         ) -> ml_collections.ConfigDict:
  """Runs a config file's ``get_config`` and returns the config.

  Args:
    path: the config file, relative to the working directory or absolute;
      the CLI form ``"configs/x.py:arg"`` passes ``arg`` after the colon.
    arg: the argument of ``get_config`` (a preset name such as ``"1000"`` or
      ``"iid"``); with neither this nor ``:arg``, ``get_config()`` is called
      without one, as the CLI does.

  Returns:
    What ``get_config`` returns (an ``ml_collections.ConfigDict``).

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: if ``arg`` is given both in ``path`` and as ``arg``, or the
      file defines no ``get_config``.
  """
  file, path_arg = _split(path)
  if path_arg is not None and arg is not None:
    raise ValueError(f"config argument given twice: {os.fspath(path)!r} and "
                     f"arg={arg!r}")
  arg = path_arg if arg is None else arg
  if not os.path.isfile(file):
    raise FileNotFoundError(f"config file not found: {file!r} (from working "
                            f"directory {os.getcwd()!r})")
  name = "config_file_" + os.path.splitext(os.path.basename(file))[0]
  spec = importlib.util.spec_from_file_location(name, file)
  if spec is None or spec.loader is None:
    raise ValueError(f"config file {file!r}: not loadable as Python")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ValueError(f"config file {file!r}: must define get_config(arg=None)")
  return get_config() if arg is None else get_config(arg)
