"""The report's smaller tables: chosen points, joint ablation grids, CRA's own diagnostics."""

from __future__ import annotations

from typing import Callable

import numpy as np

# CRA's per-round diagnostics (aggregation/canonical.py), as the report names them.
CANONICAL = (("explained_weighted", "explained energy (weighted)"),
             ("effective_clients", "effective clients 1/sum(alpha^2)"),
             ("basis_cos2", "basis overlap cos^2 (mean)"),
             ("basis_max_angle_deg", "largest principal angle (deg)"))


def short(path: str) -> str:
  return {"client.learning_rate": "client lr", "server.learning_rate": "server lr"}.get(
      path, path.split(".")[-2] + " " + path.split(".")[-1])


def chosen_cell(entry: dict) -> str:
  """``client lr 0.009, server lr 1 (grid edge: client lr high)`` from the search's integers."""
  cells = [f"{short(p)} {v:.3g}" for p, v in entry["chosen"].items()]
  edges = [f"{short(p)} {e}" for p, e in zip(entry["axes"], entry["edges"]) if e]
  return ", ".join(cells) + (f" (grid edge: {', '.join(edges)})" if edges else "")


def joint_table(scenario: str, entry: dict) -> list[str]:
  """A joint ablation's validation scores: rank x momentum rows, one column per temperature."""
  grid = list(entry["grid"].values())
  paths = list(grid[0]["values"])
  cols = list(dict.fromkeys(g["values"][paths[-1]] for g in grid))
  rows = list(dict.fromkeys(tuple(g["values"][p] for p in paths[:-1]) for g in grid))
  score = {tuple(g["values"][p] for p in paths): g["score"] for g in grid}
  lines = ["", f"### {scenario}, joint ablation: {entry['label']}", "",
           "Validation accuracy, mean of the selection seeds (rank 0: full rank); the chosen "
           f"point, run on the report seeds above: {chosen_cell(entry)}.", "",
           "| " + " | ".join(short(p) for p in paths[:-1]) + " | "
           + " | ".join(f"{short(paths[-1])} {c:g}" for c in cols) + " |",
           "|" + "---|" * (len(paths) - 1 + len(cols))]
  for row in rows:
    lines.append("| " + " | ".join(f"{v:g}" for v in row) + " | "
                 + " | ".join(f"{score[(*row, c)]:.3f}" for c in cols) + " |")
  return lines


def canonical_table(scenario: str, entries: dict, tail_mean: Callable) -> list[str]:
  """CRA's diagnostics of every method that has them: last-rounds mean, then mean over seeds.

  ``basis_*`` compare consecutive rounds' bases (1 and 0 deg: the cohort keeps
  defining the same subspace); the effective clients read against the cohort.
  """
  rows = []
  for entry in entries.values():
    series = [r.get("canonical") or {} for r in entry["runs"] if "diverged" not in r]
    if not series or not all(series):
      continue
    cells = [f"{np.nanmean([tail_mean(s.get(key)) for s in series]):.3f}"
             for key, _ in CANONICAL]
    rows.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
  if not rows:
    return []
  return (["", f"### {scenario}, CRA diagnostics (last 30% of rounds, mean over report seeds)",
           "", "| method | " + " | ".join(name for _, name in CANONICAL) + " |",
           "|" + "---|" * (len(CANONICAL) + 1)] + rows)
