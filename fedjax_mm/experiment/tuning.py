"""A log-spaced grid over one or two learning rates, widened until the best point is interior.

Points are integer exponents: point ``(i, j)`` sets axis ``a`` to
``center_a * FACTOR ** i_a``. Edges, the directory a point's runs live in and
the report's "grid edge" flag are decided on these integers, never on
formatted floats (a float rounded with ``:.4g`` does not compare equal to the
value it came from: 0.003 x 3 = 0.009000000000000001).

The search starts on ``-half_width .. half_width`` per axis; while the best
point (highest mean selection score; diverged = -inf) lies on the edge of an
axis, that axis grows by one point on that side (the whole new row or column
of a 2-D grid), at most ``max_widen`` times per side. A best point still on an
edge after that is reported as such (``Search.edges``). The search is
re-entrant: ``score`` may return None for a point whose runs are not done yet
(another worker holds them), and the search then stops and says it is pending;
called again later with the same results it takes the same path.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, NamedTuple, Sequence

FACTOR = 3.0
Point = tuple[int, ...]


class Axis(NamedTuple):
  """One tuned config field and the grid's center value."""

  path: str
  center: float

  def value(self, index: int) -> float:
    return self.center * FACTOR ** index


class Search(NamedTuple):
  """The outcome of :func:`search`.

  Attributes:
    scores: every explored point's score (None while its runs are pending).
    chosen: the best point, or None while pending.
    edges: per axis, ``"low"`` / ``"high"`` when the best point is still at
      that end of the explored range (widening exhausted), else None.
    pending: some explored point has no score yet.
  """

  scores: dict[Point, float | None]
  chosen: Point | None
  edges: tuple[str | None, ...]
  pending: bool


def point_name(point: Point) -> str:
  """A point's directory name: ``(0, -1)`` -> ``"g+0_-1"`` (exact, no float formatting)."""
  return "g" + "_".join(f"{i:+d}" for i in point)


def values(axes: Sequence[Axis], point: Point) -> dict[str, float]:
  """``{config path: value}`` of a point."""
  return {axis.path: axis.value(i) for axis, i in zip(axes, point)}


def _best(scores: dict[Point, float]) -> Point:
  # Highest score; ties go to the point nearest the center, then the smallest
  # exponents, so the choice never depends on dict order.
  return max(scores, key=lambda p: (scores[p], -sum(abs(i) for i in p), [-i for i in p]))


def search(num_axes: int, score: Callable[[Point], float | None], *, half_width: int = 1,
           max_widen: int = 2) -> Search:
  """Grid search with widening (see the module docstring).

  Args:
    num_axes: 1 or 2 (any positive number works).
    score: ``point -> mean selection score`` (higher is better; ``-inf`` for a
      diverged point; None while pending). Called once per explored point per
      call of :func:`search`.
    half_width: the initial grid is ``2 * half_width + 1`` points per axis
      (0: the center only, never widened).
    max_widen: the most points added on each side of each axis.

  Raises:
    ValueError: ``num_axes < 1``, ``half_width < 0`` or ``max_widen < 0``.
  """
  if num_axes < 1 or half_width < 0 or max_widen < 0:
    raise ValueError(f"search: need num_axes >= 1, half_width >= 0, max_widen >= 0; got "
                     f"{num_axes}, {half_width}, {max_widen}")
  lo, hi = [-half_width] * num_axes, [half_width] * num_axes
  scores: dict[Point, float | None] = {}
  while True:
    for point in itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi))):
      if point not in scores or scores[point] is None:
        scores[point] = score(point)
    if any(s is None for s in scores.values()):
      return Search(scores, None, (None,) * num_axes, True)
    best = _best({p: s for p, s in scores.items()})
    grown = False
    if half_width > 0 and math.isfinite(scores[best]):
      for a in range(num_axes):
        if best[a] == lo[a] and lo[a] > -half_width - max_widen:
          lo[a] -= 1
          grown = True
        elif best[a] == hi[a] and hi[a] < half_width + max_widen:
          hi[a] += 1
          grown = True
    if not grown:
      break
  edges = tuple(None if half_width == 0 or lo[a] < best[a] < hi[a]
                else ("low" if best[a] == lo[a] else "high") for a in range(num_axes))
  return Search(scores, best, edges, False)


def grid_points(num_axes: int, *, half_width: int = 1, max_widen: int = 2) -> tuple[int, int]:
  """The fewest and the most points :func:`search` explores (no widening; every side widened)."""
  return (2 * half_width + 1) ** num_axes, (2 * (half_width + max_widen) + 1) ** num_axes
