"""Registries of parts: a name maps to a factory whose keyword arguments are its options.

A part (a client algorithm, a preprocessor, an aggregator, a server optimizer)
is one module that defines a factory and one :class:`Part` line naming it.
The factory's signature *is* the declaration of the part's options: every
keyword argument with a default is an option (its default is the config
default, its type the config type), except the ``context`` arguments the run
supplies (e.g. the cohort size, the learning-rate schedule). The factory
checks its own arguments (``fedjax_mm.checks``: ``"<option>: must be ...,
got ..."``). Everything that needs to know the parts reads a
:class:`Registry`:

* config defaults: ``REGISTRY.section("mean")`` gives ``kind`` plus one
  sub-section per part, e.g. ``config.aggregation.krum.num_byzantine``;
* validation and the builders: ``REGISTRY.build(section, "aggregation",
  context)`` calls the chosen factory and prefixes its error with the config
  path (``config.aggregation.krum.num_byzantine: must be ...``);
* labels in tables (``Part.label``), ``--help`` (:meth:`Registry.describe`)
  and the contract suite (which parametrizes over ``REGISTRY.names``).

Adding a part is therefore one module, one registry line and its test.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Iterator, Mapping, Sequence

import ml_collections

_EMPTY = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class Part:
  """One registered part.

  Attributes:
    name: the config name (``config.<section>.kind``) and sub-section name.
    factory: ``(**options, **context) -> the part``; it checks its options.
    label: a short human name for tables and plots (e.g. ``"Multi-Krum"``).
    summary: one line for ``--help``.
    context: factory arguments supplied by the run, not by the config.
  """

  name: str
  factory: Callable[..., Any]
  label: str
  summary: str
  context: tuple[str, ...] = ()

  def options(self) -> dict[str, Any]:
    """The options and their defaults, read from the factory's signature."""
    out = {}
    for p in inspect.signature(self.factory).parameters.values():
      if p.name in self.context or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
        continue
      if p.default is _EMPTY:
        raise TypeError(f"part {self.name!r}: option {p.name!r} of {self.factory.__name__} "
                        "has no default (options need one; run-supplied arguments belong "
                        "in Part.context)")
      out[p.name] = p.default
    return out

  def option_types(self) -> dict[str, type]:
    """Each option's config type: its default's type, or the annotation for a None default."""
    hints = typing.get_type_hints(self.factory)
    out = {}
    for name, default in self.options().items():
      if default is not None:
        out[name] = type(default)
        continue
      hint = hints.get(name)
      args = [a for a in typing.get_args(hint) if a is not type(None)]
      if not (isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union) \
          or len(args) != 1:
        raise TypeError(f"part {self.name!r}: option {name!r} defaults to None, so it needs "
                        f"an annotation 'T | None', got {hint!r}")
      out[name] = args[0]
    return out


def _config_value(value: Any, kind: type) -> Any:
  if value is None:
    return ml_collections.config_dict.placeholder(kind)
  return tuple(value) if isinstance(value, list) else value


class Registry:
  """The parts of one kind, in registration order.

  Args:
    kind: what the parts are, for messages (e.g. ``"aggregator"``).
    parts: the :class:`Part` lines.
  """

  def __init__(self, kind: str, parts: Sequence[Part]):
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
      raise ValueError(f"{kind} registry: duplicate names in {names}")
    if "kind" in names:
      raise ValueError(f"{kind} registry: 'kind' is the selector field, not a part name")
    self.kind = kind
    self._parts = {p.name: p for p in parts}

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._parts)

  def __iter__(self) -> Iterator[Part]:
    return iter(self._parts.values())

  def __contains__(self, name: object) -> bool:
    return name in self._parts

  def __getitem__(self, name: str) -> Part:
    if name not in self._parts:
      raise ValueError(f"{self.kind}: must be one of {self.names}, got {name!r}")
    return self._parts[name]

  def make(self, name: str, **kwargs: Any) -> Any:
    """Builds part ``name`` from keyword options and context (library use, tests).

    Example:
      >>> tx = SERVER.make("fedadam", learning_rate=0.1, b1=0.9)   # doctest: +SKIP

    Raises:
      ValueError: an unknown name, or a keyword that is neither an option nor
        a context argument of the part.
    """
    part = self[name]
    unknown = sorted(set(kwargs) - set(part.options()) - set(part.context))
    if unknown:
      raise ValueError(f"{unknown[0]}: not an option of {self.kind} {name!r}; its options "
                       f"are {tuple(part.options())}")
    return part.factory(**kwargs)

  def section(self, kind: str | None, **fields: Any) -> ml_collections.ConfigDict:
    """A config section: ``kind``, run-level ``fields``, then one sub-section per part.

    ``kind=None`` leaves the selector out (a chain section names its parts in
    a field of its own, e.g. ``config.preprocess.chain``).
    """
    head = dict(fields)
    if kind is not None:
      self[kind]
      head = {"kind": kind, **head}
    section = ml_collections.ConfigDict(head)
    for part in self:
      types_ = part.option_types()
      section[part.name] = ml_collections.ConfigDict(
          {k: _config_value(v, types_[k]) for k, v in part.options().items()})
    return section

  def options(self, section: ml_collections.ConfigDict, path: str) -> dict[str, Any]:
    """The chosen part's options as given in ``section`` (defaults where absent)."""
    part = self._selected(section, path)
    given = section.get(part.name) or {}
    unknown = sorted(set(given) - set(part.options()))
    if unknown:
      raise ValueError(f"config.{path}.{part.name}.{unknown[0]}: not an option of "
                       f"{part.name!r}; its options are {tuple(part.options())}")
    options = part.options()
    options.update({k: given[k] for k in given})
    return options

  def build(self, section: ml_collections.ConfigDict, path: str,
            context: Mapping[str, Any] | None = None,
            context_paths: Mapping[str, str] | None = None) -> Any:
    """Builds the part ``section.kind`` with its options and the run's ``context``.

    Args:
      section: the config section (``kind`` and the parts' sub-sections).
      path: its config path for messages, e.g. ``"aggregation"``.
      context: values for the part's context arguments (extra keys ignored).
      context_paths: where each context value came from in the config, to
        name it in an error (e.g. ``{"cohort_size": "clients_per_round"}``).

    Returns:
      What the factory returns.

    Raises:
      ValueError: ``"config.<path>.<part>.<option>: ..."`` for an option's
        error, ``"config.<field>: ..."`` for a context value's, else
        ``"config.<path>.<part>: ..."``.
    """
    part = self._selected(section, path)
    options = self.options(section, path)
    context = dict(context or {})
    missing = [c for c in part.context if c not in context]
    if missing:
      raise TypeError(f"{self.kind} {part.name!r} needs the run context {missing}")
    try:
      return part.factory(**options, **{c: context[c] for c in part.context})
    except ValueError as e:
      raise ValueError(_prefixed(str(e), f"{path}.{part.name}", options,
                                 dict(context_paths or {}))) from None

  def _selected(self, section: ml_collections.ConfigDict, path: str) -> Part:
    if "kind" not in section:
      raise ValueError(f"config.{path}.kind: missing (required field)")
    try:
      return self[section.kind]
    except ValueError:
      raise ValueError(f"config.{path}.kind: must be one of {self.names}, "
                       f"got {section.kind!r}") from None

  def describe(self, path: str, selector: str = "kind") -> list[str]:
    """``--help`` lines: each part with its label, summary and options.

    ``selector="chain"`` describes an ordered, comma-separated chain of parts.
    """
    what = "one of" if selector == "kind" else "comma-separated, in order, any of"
    lines = [f"config.{path}.{selector}: {what} {self.names}"]
    for part in self:
      lines.append(f"  {part.name:<18} {part.label}: {part.summary}")
      for name, default in part.options().items():
        lines.append(f"      config.{path}.{part.name}.{name} = {default!r}")
    return lines


def _prefixed(message: str, path: str, options: Mapping[str, Any],
              context_paths: Mapping[str, str]) -> str:
  head, sep, rest = message.partition(":")
  if sep and head in options:
    return f"config.{path}.{message}"
  if sep and head in context_paths:
    return f"config.{context_paths[head]}{sep}{rest}"
  if message.startswith("config."):
    return message
  return f"config.{path}: {message}"
