"""The resolved config of a run, saved in its workdir and checked on resume.

A resumed run must be the run that was started: a changed optimizer,
schedule, number of rounds, algorithm or data would silently splice two
different runs into one history. ``config.json`` is written when a run
starts; on resume the new config is compared with it field by field and any
change outside :data:`HARMLESS` (evaluation, checkpoint cadence, execution
layout) is refused with the fields named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_collections

from fedjax_mm import configuration

FILENAME = "config.json"
# Fields that change how a run is observed or laid out, not what it computes
# (chunking and device count may change the last bits of float sums only).
# The divergence guard decides when a run stops, not what a round computes.
HARMLESS = ("eval_every", "eval_batch_size", "checkpoint.", "num_devices", "chunk_size",
            "data.eval_clients", "model.cache_dir", "divergence_factor")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _is_harmless(field: str) -> bool:
  return any(field == h or (h.endswith(".") and field.startswith(h)) for h in HARMLESS)


def as_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as JSON-able nested dicts (what ``config.json`` holds)."""
  return json.loads(config.to_json_best_effort())


def changed_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """``"field: old -> new"`` for every field that alters the run."""
  old, new = _flatten(saved), _flatten(current)
  return [f"config.{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
          for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not _is_harmless(k)]


def save(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Writes ``config.json`` atomically: a kill mid-write leaves the old file whole."""
  path = Path(workdir) / FILENAME
  tmp = path.with_name(f"{FILENAME}.tmp")
  try:
    with open(tmp, "w") as f:
      f.write(json.dumps(as_dict(config), indent=1, sort_keys=True))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def load(workdir: Path) -> dict[str, Any] | None:
  """The saved config (None without ``config.json``).

  Raises:
    configuration.ConfigError: the file is not a JSON object (e.g. truncated
      by a kill while an older version wrote it in place), one line.
  """
  path = Path(workdir) / FILENAME
  if not path.exists():
    return None
  try:
    saved = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    saved = e
  if not isinstance(saved, dict):
    raise configuration.ConfigError(
        f"{path}: must be the run's config as a JSON object, got {_what(saved)} (truncated by "
        "a killed write?): restore it, or delete it to resume without the resume check")
  return saved


def _what(value: Any) -> str:
  if isinstance(value, ValueError):
    return f"invalid JSON ({value})"
  return f"a JSON {type(value).__name__}"


def check_resume(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Raises :class:`configuration.ConfigError` if ``config`` alters the saved run.

  A workdir without ``config.json`` (written by an older version) is
  accepted as it is.
  """
  saved = load(workdir)
  if saved is None:
    return
  flat = _flatten(saved)
  moved = [f"config.{old} -> config.{new}" for old, new in configuration.MOVED.items()
           if old in flat]
  if moved:
    raise configuration.ConfigError(
        f"{Path(workdir) / FILENAME} was written before the parts got their own config "
        f"sections; these fields moved: {'; '.join(moved)}. Its run cannot be resumed with "
        "today's config layout: start it again in a new --workdir with the new field names "
        "(python -m fedjax_mm.main --help lists them)")
  changes = changed_fields(saved, as_dict(config))
  if changes:
    raise configuration.ConfigError(
        f"resuming {workdir} with a config that changes the run: {'; '.join(changes)} "
        "(use a new --workdir; only evaluation, checkpoint and layout fields may change)")
