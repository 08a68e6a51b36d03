"""Tables and plots of the comparison's report (a dict, see `experiments/compare_algorithms.py`)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ATTRS = ("shape", "color", "size", "position", "count")
TAIL = 0.3   # the oscillation is averaged over the last 30% of rounds
SCALES = {
    "small": "30 rounds of 800 example-gradients (20 clients x 5 local steps x batch 8; the "
             "8 silos: 10 steps x batch 10 on 1,000 rows each; one pass: 600 clients), "
             "evaluated on 100 clients",
    "presets": "the scenario presets: 150 rounds of 4,000 example-gradients (100 clients x 5 "
               "local steps x batch 8), evaluated on 200 clients",
}


def _stats(values) -> str:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return "diverged"
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else \
      f"{values[0]:.3f}"


def oscillation(run: dict) -> float:
  """Mean cosine between consecutive server updates over the last rounds."""
  cos = [c for c in run.get("cosine", []) if c is not None and math.isfinite(c)]
  tail = cos[-max(int(len(cos) * TAIL), 1):]
  return float(np.mean(tail)) if tail else float("nan")


def _run_minutes(report: dict) -> float:
  return sum(r.get("seconds", 0.0) for e in report["scenarios"].values()
             for m in e["methods"].values() for r in m["runs"]) / 60


def _row(label: str, runs: list[dict], extra: str = "") -> str:
  ok = [r for r in runs if "diverged" not in r]
  get = lambda key: [r["final"].get(key) for r in ok]
  cells = [label, extra, _stats(get("accuracy"))]
  cells += [_stats(get(f"acc_{a}")) for a in ATTRS]
  cells += [_stats(get("loss")), _stats(get("client_accuracy_worst10")),
            _stats([oscillation(r) for r in ok]) if any(r.get("cosine") for r in ok) else "",
            f"{sum(r.get('seconds', 0) for r in runs) / max(len(runs), 1):.0f}"]
  return "| " + " | ".join(cells) + " |"


def markdown(report: dict) -> str:
  s = report["settings"]
  lines = [
      "# Fed-CMP vs baselines on four Fed-MA scenarios",
      "",
      f"Written by `experiments/compare_algorithms.py`{' --quick' if s['quick'] else ''}"
      f"{' --scale ' + s['scale'] if s.get('scale') and not s['quick'] else ''}"
      f"{' --workers ' + str(s['workers']) if s.get('workers', 1) > 1 else ''}: "
      + (SCALES.get(s.get("scale"), "") + "; " if s.get("scale") else "")
      + f"{s['seeds']} seed(s), mean ± std; "
      + (f"each method tuned on seed 0 over its default learning rate x {s['grid']} "
         "(by final alignment accuracy on the evaluation clients), then run on the other "
         "seeds" if s["tuned"] else "each method at its default learning rate")
      + f"; {s['devices']} device(s) per worker; the runs' own time sums to "
      f"{_run_minutes(report):.1f} min (this invocation: {s.get('wall_seconds', 0) / 60:.1f} "
      "min; finished runs and references are reused across invocations).",
      "Columns: alignment accuracy (zero-shot, true caption ranked above every "
      "one-attribute-changed caption), per attribute, caption loss, worst-10% clients' "
      "accuracy, oscillation = mean cosine between consecutive server updates over the last "
      "30% of rounds, seconds per run. \"grid edge\": the best learning rate was an end of "
      "the grid, so a wider grid might do better.",
  ]
  if s.get("not_run"):
    lines += ["", f"**Not in this report (not run with this protocol yet):** "
              f"{', '.join(s['not_run'])}."]
  header = ("| method | lr (tuned field: grid -> chosen) | align acc | "
            + " | ".join(ATTRS) + " | caption loss | worst 10% | update cos | s/run |")
  for name, entry in report["scenarios"].items():
    lines += ["", f"## {name}: {entry['clients']:,} clients, {entry['per_round']} per round, "
              f"{entry['rounds']} rounds x {entry['local_steps']} local steps x batch "
              f"{entry['batch']}", "", header, "|" + "---|" * (header.count("|") - 1)]
    for ref, result in entry["references"].items():
      label = ref + (f" ({result['steps']} steps)" if "steps" in result else "")
      lines.append(_row(label, [{"final": result, "cosine": []}]))
    for key, m in entry["methods"].items():
      grid = ", ".join(f"{lr}: {acc:.3f}" if math.isfinite(acc) else f"{lr}: diverged"
                       for lr, acc in m["grid"].items())
      label = ("ablation: " if m["ablation"] else "") + m["label"]
      points = [float(lr) for lr in m["grid"]]
      edge = len(points) > 1 and m["chosen"] in (min(points), max(points))
      lines.append(_row(label, m["runs"], f"{m['tuned']} {{{grid}}} -> {m['chosen']:.4g}"
                        + (" (grid edge)" if edge else "")))
  if report.get("budget_check"):
    entry = report["budget_check"]
    refs = entry["references"]
    got = ", ".join(f"{m['label']} {_stats([r['final'].get('accuracy') for r in m['runs']])}"
                    for m in entry["methods"].values())
    lines += ["", "## Budget check: the same budget on IID clients", "",
              f"{got} (one seed, default learning rates) against centralized "
              f"{refs['centralized, same examples']['accuracy']:.3f} (same examples) and "
              f"{refs['centralized, same sequential steps']['accuracy']:.3f} (same sequential "
              "steps): where IID clients fall short of the first, part of every scenario's "
              "gap to it is budget, not heterogeneity."]
  return "\n".join(lines) + "\n"


def plots(report: dict, out: Path, stem: str) -> None:
  for name, entry in report["scenarios"].items():
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, m in entry["methods"].items():
      curves = [r["curve"] for r in m["runs"] if r.get("curve")]
      if not curves:
        continue
      floor = entry["references"]["floor"]["accuracy"]   # round 0: the untrained projector
      rounds = [0] + [p[0] for p in curves[0]]
      accs = np.array([[floor] + [p[1] for p in c] for c in curves if len(c) == len(rounds) - 1])
      mean, std = accs.mean(0), accs.std(0)
      style = "--" if m["ablation"] else "-"
      line, = ax.plot(rounds, mean, style, label=m["label"])
      ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.15)
      cos = np.array([r["cosine"] for r in m["runs"] if r.get("cosine")])
      if cos.size and key in ("fedavg", "fedavgm", "fedcmp", "opm_only", "cra_only"):
        bx.plot(np.arange(1, cos.shape[1] + 1), np.nanmean(cos, 0), style, label=m["label"],
                color=line.get_color())
    refs = entry["references"]
    ax.axhline(refs["floor"]["accuracy"], color="gray", ls=":", label="floor")
    for ref, ls in (("centralized, same examples", "--"),
                    ("centralized, same sequential steps", "-.")):
      ax.axhline(refs[ref]["accuracy"], color="black", ls=ls, label=ref)
    ax.set(xlabel="round", ylabel="alignment accuracy", title=f"{name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    bx.set(xlabel="round", ylabel="cos(update_t, update_t-1)",
           title="oscillation of the server's trajectory")
    bx.axhline(0, color="gray", lw=0.5)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}_{name}.png", dpi=110)
    plt.close(fig)
