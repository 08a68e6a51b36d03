"""The demos' plot: accuracy against round, one curve per run, reference lines across."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import matplotlib

matplotlib.use("Agg")   # files only; no display on the machines that run experiments
import matplotlib.pyplot as plt  # noqa: E402

Curve = Sequence[tuple[int, float]]   # (round, accuracy); round 0 = the untrained model


class Line(NamedTuple):
  """A horizontal reference line (the floor, chance, the centralized ceiling)."""

  value: float
  label: str
  color: str = "gray"
  style: str = ":"


def curve(floor_accuracy: float, history: Sequence[Mapping]) -> list[tuple[int, float]]:
  """A run's curve from its metrics history, starting at round 0 from the floor."""
  return [(0, floor_accuracy)] + [(h["round"], h["eval_accuracy"]) for h in history
                                  if "eval_accuracy" in h]


def accuracy_plot(path: str | Path, curves: Mapping[str, Curve], lines: Sequence[Line], *,
                  ylabel: str, title: str, ylim: tuple[float, float] | None = None) -> None:
  """Writes the accuracy-vs-round plot to ``path`` (PNG).

  Args:
    path: the file written.
    curves: label -> points.
    lines: reference lines, drawn after the curves.
    ylabel: the y axis' name.
    title: the plot's title.
    ylim: default ``(0, top + 0.02)`` with ``top`` 1.25 x the highest curve
      point or line (at most 1).
  """
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for label, points in curves.items():
    ax.plot(*zip(*points), marker="o", ms=3, label=label)
  for line in lines:
    ax.axhline(line.value, color=line.color, ls=line.style, label=line.label)
  if ylim is None:
    highest = max([ln.value for ln in lines] + [a for c in curves.values() for _, a in c])
    ylim = (0, min(1.0, 1.25 * highest) + 0.02)
  ax.set(xlabel="round", ylabel=ylabel, ylim=ylim, title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
