"""Tables, significance and plots of the comparison's report (see `experiments/compare_algorithms.py`).

Per scenario every method's report runs pair up by seed: each method is
tested against the best baseline (the highest mean among the non-Fed-CMP
methods) with a paired t-test over seeds (the primary test: with 5 pairs the
exact Wilcoxon p cannot go below 0.0625; its p is kept in the JSON), the p
values Holm-corrected within the scenario. Intervals are bootstrap intervals
over the test clients of the seed-averaged per-client accuracy. Across
scenarios, the Friedman test ranks the compared methods and the Nemenyi
critical difference says which mean ranks differ.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

from fedjax_mm.experiment import report_tables, statistics
from fedjax_mm.experiment.report_tables import chosen_cell

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TAIL = 0.3   # trajectory cosines are averaged over the last 30% of rounds
# Fed-CMP and its parts: never "the best baseline".
FEDCMP_FAMILY = ("fedcmp", "cra_", "opm_only")
# Per-client tails need clients with several test rows (one_pass clients hold ~2).
MIN_ROWS_FOR_TAIL = 5


def finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(v)]


def _stats(values, missing: str = "diverged") -> str:
  values = finite(values)
  if not values:
    return missing
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else \
      f"{values[0]:.3f}"


def tail_mean(series) -> float:
  """Mean of a per-round series over its last :data:`TAIL` of rounds (NaN if none)."""
  values = finite(series or [])
  tail = values[-max(int(len(values) * TAIL), 1):]
  return float(np.mean(tail)) if tail else float("nan")


def accuracies(entry: dict) -> list[float]:
  """Per report seed final accuracy (NaN for a diverged run, which pairs as a loss)."""
  return [r["final"].get("accuracy", float("nan")) for r in entry["runs"]]


def client_accuracy(entry: dict) -> tuple[np.ndarray, np.ndarray] | None:
  """Seed-averaged accuracy per test client and the clients' rows, or None if not kept."""
  runs = [r["final"]["clients"] for r in entry["runs"] if "clients" in r.get("final", {})]
  if len(runs) != len(entry["runs"]) or not runs:
    return None
  acc = np.array([[np.nan if a is None else a for a in r["accuracy"]] for r in runs])
  return np.nanmean(acc, 0), np.asarray(runs[0]["count"], float)


def best_baseline(entries: dict) -> str | None:
  """The compared non-Fed-CMP method with the highest mean accuracy."""
  scores = {k: np.mean(finite(accuracies(e)) or [-np.inf]) for k, e in entries.items()
            if not e.get("ablation") and not k.startswith(FEDCMP_FAMILY)}
  return max(scores, key=scores.get) if scores else None


def significance(entries: dict) -> dict[str, dict]:
  """Each method against the best baseline: mean difference, paired t / Wilcoxon p, Holm p."""
  best = best_baseline(entries)
  if best is None:
    return {}
  ref = np.nan_to_num(accuracies(entries[best]), nan=0.0)
  out = {}
  for key, e in entries.items():
    a = np.nan_to_num(accuracies(e), nan=0.0)    # a diverged seed scores 0: a loss
    if key == best or len(a) != len(ref) or len(a) < 2:
      continue
    t = statistics.paired_test(a, ref, kind="t")
    w = statistics.paired_test(a, ref, kind="wilcoxon")
    out[key] = {"vs": best, "diff": float(np.mean(a - ref)), "p_t": t.p_value,
                "p_wilcoxon": w.p_value}
  adjusted = statistics.holm([v["p_t"] for v in out.values()]) if out else []
  for v, p in zip(out.values(), adjusted):
    v["p_holm"] = float(p)
  return out


def ranking(report: dict) -> dict | None:
  """Friedman test and Nemenyi critical difference over the scenarios every method ran."""
  scenarios = list(report["scenarios"].values())
  keys = [k for k in (scenarios[0]["methods"] if scenarios else {})
          if all(k in s["methods"] and not s["methods"][k]["ablation"] for s in scenarios)]
  if len(scenarios) < 2 or len(keys) < 3:
    return None
  scores = np.array([[np.mean(np.nan_to_num(accuracies(s["methods"][k]), nan=0.0))
                      for k in keys] for s in scenarios])
  test = statistics.friedman(scores)
  cd = statistics.nemenyi_cd(len(keys), len(scenarios))
  groups = statistics.nemenyi_groups(test.mean_ranks, cd)
  return {"methods": keys, "mean_ranks": [float(r) for r in test.mean_ranks],
          "chi2": float(test.chi2), "p": float(test.p_value),
          "iman_davenport_p": float(test.f_p_value), "cd": float(cd),
          "differ": [[keys[i], keys[j]] for i, j in groups.differ]}


def _ci_cell(entry: dict, seed: int = 0) -> str:
  clients = client_accuracy(entry)
  if clients is None:
    return ""
  acc, count = clients
  ci = statistics.bootstrap_ci(acc[count > 0], seed=seed)
  return f"[{ci.low:.3f}, {ci.high:.3f}]"


def _row(label: str, entry: dict, sig: dict | None, tail: bool) -> str:
  runs = [r for r in entry["runs"] if "diverged" not in r]
  get = lambda key: [r["final"].get(key) for r in runs]
  diverged = len(entry["runs"]) - len(runs)
  cells = [label, chosen_cell(entry) if entry.get("chosen") else "",
           _stats(get("accuracy")) + (f" ({diverged} diverged)" if diverged else ""),
           _ci_cell(entry)]
  if sig:
    cells.append(f"{sig['diff']:+.3f}, {statistics.format_p(sig['p_holm'])}")
  else:
    cells.append("best baseline" if sig is None and entry.get("is_best") else "")
  cells += [_stats(get("loss")), _stats(get("client_accuracy_worst10")) if tail else "n/a",
            _stats([tail_mean(r.get("pg_cosine")) for r in runs], ""),
            _stats([r.get("path_efficiency") for r in runs], ""),
            f"{np.mean([r.get('seconds', 0) for r in entry['runs']]):.0f}"]
  return "| " + " | ".join(cells) + " |"


HEADER = ("| method | tuned point | align acc | 95% CI (clients) | vs best baseline (Holm p) "
          "| caption loss | worst 10% | pseudo-grad cos | path eff. | s/run |")


def _protocol_text(s: dict) -> str:
  if not s["tuned"]:
    return (f"each method at its default point (no tuning); {len(s['report_seeds'])} report "
            f"seed(s) {list(s['report_seeds'])}, evaluated on the test clients")
  return (f"each method tuned on a log-spaced grid (factor 3, 3 points per axis, widened by up "
          f"to 2 points a side while the best point is on an edge) over its axes, each point "
          f"scored on the validation clients averaged over selection seeds "
          f"{list(s['selection_seeds'])}; the chosen point then run on the fresh report seeds "
          f"{list(s['report_seeds'])}, paired across methods, evaluated on the test clients "
          "(disjoint from the validation clients); the centralized references tuned the same "
          "way over Adam's learning rate")


def markdown(report: dict) -> str:
  s = report["settings"]
  minutes = sum(r.get("seconds", 0.0) for e in report["scenarios"].values()
                for m in e["methods"].values() for r in m["runs"]) / 60
  lines = [
      "# Fed-CMP vs baselines on the Fed-MA scenarios", "",
      f"Written by `experiments/compare_algorithms.py {s.get('argv', '')}`: "
      f"{_protocol_text(s)}; {s['devices']} device(s) per worker, on {s.get('cpu', '?')}; "
      f"the report runs' own time sums to {minutes:.1f} min (this invocation: "
      f"{s.get('wall_seconds', 0) / 60:.1f} min; finished runs are reused).",
      "Columns: alignment accuracy (zero-shot: the true caption ranked above every "
      "one-attribute-changed caption), mean ± std over report seeds; a 95% bootstrap interval "
      "over test clients of the seed-averaged client accuracy; the difference to the best "
      "baseline with its Holm-corrected paired t-test p; caption loss; worst-10% clients "
      f"(n/a where the median test client has under {MIN_ROWS_FOR_TAIL} rows); the cosine "
      "between consecutive pre-optimizer pseudo-gradients over the last 30% of rounds (the "
      "oscillation of what the clients send, not of a momentum buffer); path efficiency "
      "||W_T - W_0|| / sum_t ||W_t - W_t-1|| (1: a straight path); seconds per run. \"grid "
      "edge\": the best point is still an end of the widened grid.",
  ]
  if s.get("not_run"):
    lines += ["", f"**Not in this report:** {', '.join(s['not_run'])}."]
  for name, entry in report["scenarios"].items():
    refs = entry["references"]
    ev = entry.get("eval_clients", {})
    lines += ["", f"## {name}: {entry['clients']:,} clients, {entry['per_round']} per round, "
              f"{entry['rounds']} rounds x {entry['local_steps']} local steps ({entry['local_mode']}"
              f") x batch {entry['batch']}: {refs['examples_per_round']:,.0f} example-gradients "
              f"per round; {ev.get('validation', '?')} validation / {ev.get('test', '?')} test "
              "clients"]
    if entry.get("dataset", "world") != "world":
      lines += ["", f"(`{entry['dataset']}`: \"align acc\" is this dataset's accuracy metric; for "
                "the positive control, the clipped R² of the shared map, "
                "`fedjax_mm/data/interference.py`.)"]
    lines += ["", HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    counts = None
    for m in entry["methods"].values():
      counts = counts if counts is not None else client_accuracy(m)
    tail = counts is None or np.median(counts[1][counts[1] > 0]) >= MIN_ROWS_FOR_TAIL
    lines.append(_row("floor (untrained projector)", {"runs": [refs["floor"]]}, {}, tail))
    for ref in ("centralized, same examples", "centralized, same sequential steps"):
      steps = refs[ref]["runs"][0].get("steps", "?")
      lines.append(_row(f"{ref} ({steps} steps, Adam)", refs[ref], {}, tail))
    sig = significance(entry["methods"])
    best = best_baseline(entry["methods"])
    for key, m in entry["methods"].items():
      label = ("ablation: " if m["ablation"] else "") + m["label"]
      lines.append(_row(label, {**m, "is_best": key == best}, sig.get(key), tail))
  for name, entry in report["scenarios"].items():
    lines += report_tables.canonical_table(name, entry["methods"], tail_mean)
    for m in entry["methods"].values():
      if m.get("joint"):
        lines += report_tables.joint_table(name, m)
  rank = ranking(report)
  if rank:
    order = np.argsort(rank["mean_ranks"])
    lines += ["", "## Ranking across scenarios", "",
              f"Friedman chi2 = {rank['chi2']:.2f}, {statistics.format_p(rank['p'])} over "
              f"{len(report['scenarios'])} scenarios; Nemenyi critical difference "
              f"{rank['cd']:.2f} (alpha 0.05): mean ranks closer than that are not "
              "distinguishable.", "",
              "| method | mean rank |", "|---|---|"]
    first = next(iter(report["scenarios"].values()))["methods"]
    lines += [f"| {first[rank['methods'][i]]['label']} | {rank['mean_ranks'][i]:.2f} |"
              for i in order]
    pairs = ", ".join(f"{first[a]['label']} vs {first[b]['label']}" for a, b in rank["differ"])
    lines += ["", f"Pairs whose mean ranks differ by at least the CD: {pairs or 'none'}."]
  return "\n".join(lines) + "\n"


def plots(report: dict, out: Path, stem: str) -> None:
  """Per scenario: accuracy vs round (mean ± std over seeds) and the pseudo-gradient cosine."""
  for name, entry in report["scenarios"].items():
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    floor = entry["references"]["floor"]["final"]["accuracy"]
    for key, m in entry["methods"].items():
      curves = [r["curve"] for r in m["runs"] if r.get("curve")]
      if not curves:
        continue
      rounds = [0] + [p[0] for p in curves[0]]
      accs = np.array([[floor] + [p[1] for p in c] for c in curves if len(c) == len(rounds) - 1])
      mean, std = accs.mean(0), accs.std(0)
      style = "--" if m["ablation"] else "-"
      line, = ax.plot(rounds, mean, style, label=m["label"])
      ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.15)
      cos = [[np.nan if c is None else c for c in r.get("pg_cosine") or []] for r in m["runs"]]
      cos = np.array([c for c in cos if c and len(c) == len(cos[0])])
      if cos.size and not m["ablation"]:
        bx.plot(np.arange(1, cos.shape[1] + 1), np.nanmean(cos, 0), style, label=m["label"],
                color=line.get_color())
    refs = entry["references"]
    ax.axhline(floor, color="gray", ls=":", label="floor")
    for ref, ls in (("centralized, same examples", "--"),
                    ("centralized, same sequential steps", "-.")):
      ax.axhline(np.mean(finite(accuracies(refs[ref]))), color="black", ls=ls, label=ref)
    ax.set(xlabel="round", ylabel="alignment accuracy (test clients)", title=name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    bx.set(xlabel="round", ylabel="cos(pseudo-gradient_t, pseudo-gradient_t-1)",
           title="oscillation of what the clients send")
    bx.axhline(0, color="gray", lw=0.5)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}_{name}.png", dpi=110)
    plt.close(fig)
