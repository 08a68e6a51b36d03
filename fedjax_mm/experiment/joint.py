"""Fed-CMP's variants ablated jointly with the basis rank, OPM's momentum and CRA's temperature.

A variant's ablation at Fed-CMP's own rank 32, momentum 0.9 and temperature
0.1 answers "does this change help at the defaults"; a variant may need a
different rank (the residual variants make rank a trade-off no longer), a
different momentum (the split OPM no longer leaks, so the buffer lives
longer) or a different temperature (z-scored scores live on another scale).
The joint ablation tunes the three on a product grid (:data:`JOINT_AXES`),
at Fed-CMP's chosen learning rates, by the comparison's own protocol: every
point scored on the validation clients averaged over the selection seeds,
the best point then run on the report seeds on the test clients, so it pairs
by seed with every other method of the scenario.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fedjax_mm.experiment import methods as methods_lib
from fedjax_mm.experiment import protocol

# rank 0 is full rank; momentum is OPM's heavy-ball coefficient beta; the
# temperature is the softmax's over the clients' reliability scores (on [0, 1]
# for explained energy: 1 is near uniform, 0.03 near the single best client).
JOINT_AXES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("aggregation.canonical.rank", (8, 32, 0)),
    ("server.opm.momentum", (0.5, 0.9)),
    ("aggregation.canonical.temperature", (0.03, 0.1, 1.0)),
)
SUFFIX = "+joint"   # the report's key of a variant's joint entry: "fedcmp_split+joint"


def points(axes: Sequence[tuple[str, Sequence[Any]]] = JOINT_AXES) -> list[dict[str, Any]]:
  """Every point of the product grid, ``{config path: value}``, in the axes' order."""
  paths = [path for path, _ in axes]
  return [dict(zip(paths, combo)) for combo in itertools.product(*(v for _, v in axes))]


def point_name(point: Mapping[str, Any]) -> str:
  """A point's directory name: ``{"a.rank": 8, "b.momentum": 0.5}`` -> ``"rank8_momentum0.5"``."""
  return "_".join(f"{path.split('.')[-1]}{value}" for path, value in point.items())


def choose(scores: Mapping[str, float], grid: Mapping[str, Mapping[str, Any]],
           default: Mapping[str, Any]) -> str:
  """The best-scoring point's name.

  A tie goes to the point sharing most coordinates with ``default`` (Fed-CMP's
  own values: a change needs a better score to be chosen), then to the first
  listed, so the choice never depends on anything but the scores.
  """
  names = list(scores)
  def key(n):
    same = sum(grid[n][path] == value for path, value in default.items())
    return scores[n], same, -names.index(n)
  return max(names, key=key)


RunAt = Callable[[Mapping[str, Any], int, str, Path], "dict | None"]


def joint_runs(key: str, rates: Mapping[str, float], run_at: RunAt, base: Path, *,
               seeds: Sequence[int], score: Callable[[dict], float],
               axes: Sequence[tuple[str, Sequence[Any]]] = JOINT_AXES) -> dict | None:
  """Tune variant ``key``'s rank x momentum x temperature, then run its best point on ``seeds``.

  Args:
    key: a Fed-CMP variant of :data:`fedjax_mm.experiment.methods.METHODS`.
    rates: the learning rates every point runs at (Fed-CMP's chosen ones).
    run_at: ``(overrides, seed, split, rundir) -> result`` (None: pending).
    base: the variant's joint directory (``<point>/<sel|test><seed>/``).
    seeds: the report seeds.
    score: a run's selection score (its final accuracy, -inf if diverged).
    axes: the grid (default :data:`JOINT_AXES`).

  Returns:
    The variant's report entry, shaped as a tuned method's (``chosen``,
    ``grid``, ``runs``), or None while any run is pending.
  """
  method = methods_lib.METHODS[key]
  grid = points(axes)
  scores: dict[str, float] = {}
  pending = False
  for p in grid:
    runs = [run_at({**rates, **p}, s, "validation", base / point_name(p) / f"sel{s}")
            for s in protocol.SELECTION_SEEDS]
    if any(r is None for r in runs):
      pending = True
      continue
    scores[point_name(p)] = float(np.mean([score(r) for r in runs]))
  if pending:
    return None
  named = {point_name(p): p for p in grid}
  best = choose(scores, named, {path: method.overrides.get(path) for path, _ in axes})
  chosen = named[best]
  runs = [run_at({**rates, **chosen}, s, "test", base / best / f"test{s}") for s in seeds]
  if any(r is None for r in runs):
    return None
  return {"axes": [*rates, *chosen], "point": [], "chosen": {**rates, **chosen},
          "grid": {point_name(p): {"values": p, "score": scores[point_name(p)]} for p in grid},
          "edges": [None] * (len(rates) + len(chosen)), "runs": runs,
          "label": f"{method.label}, rank x beta x tau tuned", "ablation": True, "joint": True}
