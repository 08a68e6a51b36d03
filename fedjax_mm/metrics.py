"""Run records on disk: ``metrics.jsonl`` (one line per round), ``summary.json``.

The history of records also travels inside every checkpoint, so after a
resume ``metrics.jsonl`` is rewritten from it: no round is lost or repeated
whatever moment the previous process was killed at.

Both files are strict JSON (RFC 8259): a NaN or infinite number, which
Python's ``json`` would write as the non-standard tokens ``NaN`` /
``Infinity``, is written as ``null`` (what pandas and ``jq`` read as a
missing value). The divergence guard stops a run on a non-finite loss or
update, so ``null`` marks a metric that had no value (e.g. a cosine with no
previous update), not a hidden blow-up.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def to_python(metrics: Mapping[str, Any]) -> dict[str, float | int]:
  """Device scalars -> plain Python numbers (ints stay ints)."""
  out = {}
  for name, value in metrics.items():
    value = value.item() if hasattr(value, "item") else value
    out[name] = value
  return out


def strict(value: Any) -> Any:
  """``value`` with every non-finite float (in dicts, lists, tuples) as None."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, Mapping):
    return {k: strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  return value


def _dumps(value: Any, **kwargs) -> str:
  # allow_nan=False: a non-finite number that strict() missed fails loudly.
  return json.dumps(strict(value), allow_nan=False, **kwargs)


def rewrite(workdir: str | os.PathLike, history: Iterable[Mapping[str, Any]]) -> None:
  """Atomically replaces ``metrics.jsonl`` with ``history``."""
  path = Path(workdir) / METRICS_FILE
  tmp = path.with_suffix(".jsonl.tmp")
  with open(tmp, "w") as f:
    for record in history:
      f.write(_dumps(record) + "\n")
  os.replace(tmp, path)


def append(workdir: str | os.PathLike, record: Mapping[str, Any]) -> None:
  with open(Path(workdir) / METRICS_FILE, "a") as f:
    f.write(_dumps(record) + "\n")


def read(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def write_summary(workdir: str | os.PathLike, summary: Mapping[str, Any]) -> None:
  path = Path(workdir) / SUMMARY_FILE
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(_dumps(summary, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def format_table(rows: list[Mapping[str, Any]], columns: list[str]) -> str:
  """A plain-text table; floats with 4 significant decimals."""
  def cell(v):
    if isinstance(v, float):
      return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)
  cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
