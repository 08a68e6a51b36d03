"""Config overrides for experiments: ``key=value`` strings and method tables, via ml_collections.

A ``key=value`` string is parsed exactly as ``fedjax_mm.main``'s
``--config.key=value`` is: by ``ml_collections.config_flags``, from the
field's type (``true``/``false`` for a bool, a float for a float field or a
placeholder of one, a bare string for a string). A method table's values are
already typed and go through ``ConfigDict``'s own type checks. A field that
does not exist, or that moved (``configuration.MOVED``), is refused in the
CLI's one-line wording (``cli_flags.unknown_field``), before anything is set.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from fedjax_mm import cli_flags


class OverrideError(ValueError):
  """An override that names no field, moved field, or a value of the wrong type."""


def check_field(config: ml_collections.ConfigDict, path: str) -> None:
  """Raises :class:`OverrideError` when ``config.<path>`` is not a field (or moved)."""
  message = cli_flags.unknown_field(config, path)
  if message:
    raise OverrideError(message)


def split(item: str) -> tuple[str, str]:
  """``"a.b=1"`` -> ``("a.b", "1")``."""
  key, sep, value = item.partition("=")
  if not sep or not key:
    raise OverrideError(f"--override: must be key=value (e.g. server.learning_rate=0.1), "
                        f"got {item!r}")
  return key.strip(), value


def apply(config: ml_collections.ConfigDict, items: Sequence[str]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``key=value`` strings applied in order (later ones win).

  Example:
    >>> apply(config, ["algorithm.kind=fedprox", "algorithm.fedprox.mu=0.1"])  # doctest: +SKIP

  Raises:
    OverrideError: one line naming the field: unknown, moved, or a value
      that does not parse as the field's type.
  """
  config = copy.deepcopy(config)   # keeps placeholders typed (resolving drops their type)
  pairs = [split(item) for item in items]
  for key, _ in pairs:
    check_field(config, key)
  for key, value in pairs:
    config = _parsed(config, key, value)
  return config


def _parsed(config: ml_collections.ConfigDict, key: str, value: str
            ) -> ml_collections.ConfigDict:
  argv = ["overrides", f"--config.{key}={value}"]
  # A private FlagValues: the CLI's parser, without touching absl's global
  # flags (the scripts parse their own arguments with argparse).
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_dict("config", config, flag_values=flag_values,
                                           lock_config=False, sys_argv=argv)
  try:
    flag_values(argv)
  except flags.Error:
    raise OverrideError(f"config.{key}: must be {_type_name(config, key)}, got "
                        f"{value!r}") from None
  return holder.value


def apply_values(config: ml_collections.ConfigDict, values: Mapping[str, Any]
                 ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with typed ``{path: value}`` set (a method's overrides).

  Raises:
    OverrideError: ``"config.<path>: ..."`` for an unknown or moved field,
      or a value the field's type refuses (e.g. a string for a float).
  """
  config = copy.deepcopy(config)   # keeps placeholders typed (resolving drops their type)
  for key in values:
    check_field(config, key)
  for key, value in values.items():
    try:
      config.update_from_flattened_dict({key: value})
    except TypeError:
      raise OverrideError(f"config.{key}: must be {_type_name(config, key)}, got "
                          f"{value!r}") from None
  return config


def _type_name(config: ml_collections.ConfigDict, path: str) -> str:
  kind = config_flags.config_path.get_type(path, config)
  return {bool: "true or false", int: "an integer", float: "a number",
          str: "a string"}.get(kind, f"of type {kind.__name__}")
