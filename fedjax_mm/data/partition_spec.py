"""The partition spec: its fields, their allowed values, and validation.

:func:`validate_spec` checks a spec (dict, dataclass or ConfigDict) field by
field before :func:`fedjax_mm.data.partition.partition` does any work; this
module holds the spec's field names, the allowed kinds and modes, and the
private parsers (``_mapping``, ``_choice``, ``_number``) it is built from.

References:
  The spec composes the skews of Li, Diao, Chen, He, "Federated Learning on
  Non-IID Data Silos: An Experimental Study", ICDE 2022; arXiv:2102.02079.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from fedjax_mm import checks

KINDS = ("iid", "dirichlet", "shards")
QUANTITY_KINDS = ("equal", "power_law")
STYLE_MODES = ("per_client", "iid")
SPEC_FIELDS = ("kind", "alpha", "shards_per_client", "quantity",
               "domains_per_client", "styles", "missing_modality")


def _mapping(obj: Any, path: str, allowed: Sequence[str]) -> dict | None:
  """Plain dict of a mapping / dataclass / ConfigDict; rejects unknown keys."""
  if obj is None:
    return None
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    obj = dataclasses.asdict(obj)
  elif hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: must be a mapping or dataclass, got {type(obj).__name__}")
  unknown = sorted(set(obj) - set(allowed))
  if unknown:
    raise ValueError(f"{path}: unknown field(s) {unknown}; allowed: {list(allowed)}")
  return dict(obj)


def _choice(d: dict | None, path: str, key: str, allowed: Sequence, *,
            required: bool = False) -> Any:
  """Checked ``d[key]`` in ``allowed``; None when absent and not required."""
  v = None if d is None else d.get(key)
  if v is not None or required:
    checks.one_of(f"{path}.{key}", v, allowed)
  return v


def _number(d: dict | None, path: str, key: str, ok: Callable[[float], bool], rule: str,
            *, integer: bool = False, default: Any = None, required: bool = False) -> Any:
  """Checked number ``d[key]`` (or ``default``); None when absent and not required."""
  v = default if d is None else d.get(key, default)
  if v is not None or required:
    checks.number(f"{path}.{key}", v, ok, rule, integer=integer)
  return v


def validate_spec(spec: Any) -> dict[str, Any]:
  """Checks a partition spec without touching data.

  The fields are those :func:`fedjax_mm.data.partition.partition` documents.

  Args:
    spec: the spec, a mapping, dataclass or ConfigDict.

  Returns:
    The parsed fields.

  Raises:
    ValueError: naming the first invalid field, what it allows and its value.
  """
  s = _mapping(spec, "spec", SPEC_FIELDS)
  if s is None:
    raise ValueError("spec: must be a mapping or dataclass, got None")
  positive, count, natural = (lambda v: v > 0), (lambda v: v >= 1), (lambda v: v >= 0)
  unit = lambda v: 0 <= v <= 1  # noqa: E731
  kind = _choice(s, "spec", "kind", KINDS, required=True)
  alpha = _number(s, "spec", "alpha", positive, "> 0", required=kind == "dirichlet")
  spc = _number(s, "spec", "shards_per_client", count, ">= 1", integer=True,
                required=kind == "shards")
  for key, owner in (("alpha", "dirichlet"), ("shards_per_client", "shards")):
    if s.get(key) is not None and kind != owner:
      raise ValueError(f"spec.{key}: only allowed with kind={owner!r}, got kind={kind!r}")
  dpc = _number(s, "spec", "domains_per_client", count, ">= 1", integer=True)
  q = _mapping(s.get("quantity"), "spec.quantity", ("kind", "exponent", "min_size"))
  q_kind = _choice(q, "spec.quantity", "kind", QUANTITY_KINDS, required=q is not None)
  power = q_kind == "power_law"
  exponent = _number(q, "spec.quantity", "exponent", positive, "> 0", required=power)
  min_size = _number(q, "spec.quantity", "min_size", natural, ">= 0", integer=True,
                     default=1)
  st = _mapping(s.get("styles"), "spec.styles", ("mode", "styles_per_client"))
  mode = _choice(st, "spec.styles", "mode", STYLE_MODES, required=st is not None)
  per = _number(st, "spec.styles", "styles_per_client", count, ">= 1", integer=True,
                default=1)
  mm = _mapping(s.get("missing_modality"), "spec.missing_modality",
                ("fraction_clients", "caption_rate"))
  frac = _number(mm, "spec.missing_modality", "fraction_clients", unit, "in [0, 1]",
                 required=mm is not None)
  rate = _number(mm, "spec.missing_modality", "caption_rate", unit, "in [0, 1]",
                 required=mm is not None)
  if kind == "shards" and (power or dpc is not None):
    raise ValueError("spec.quantity, spec.domains_per_client: kind='shards' fixes equal "
                     "sizes and one concept order, so quantity must be None or 'equal' "
                     "and domains_per_client None")
  return {"kind": kind, "alpha": alpha, "shards_per_client": spc,
          "domains_per_client": dpc, "power": power, "exponent": exponent,
          "min_size": min_size, "styles": st, "mode": mode, "styles_per_client": per,
          "missing_modality": mm, "fraction_clients": frac, "caption_rate": rate}
