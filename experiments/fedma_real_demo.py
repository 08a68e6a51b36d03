"""The real Fed-MA demo: a projector between EfficientNet-Lite0 and SmolLM2-135M.

Loads the frozen towers (fetched once by ``scripts/fetch_real.sh``), builds the
clients' data (Fashion-MNIST + Tux Paint stamps through local TFDS builders,
vision features computed once and cached), then compares on the same clients:

* floor: the untrained projector;
* each method of ``--methods`` (default FedAvg) on the Dirichlet split;
* centralized: the union of the clients' training rows, same example budget.

Reports zero-shot classification of held-out Fashion-MNIST by caption
likelihood over the ten class captions (chance 0.10), caption loss on those
rows and on the held-out stamps, and greedy captions of a few held-out images
next to the truth. Writes ``results.md`` / ``results.json`` and
``accuracy.png`` into ``--workdir``.

  python experiments/fedma_real_demo.py --workdir runs/real_demo
  python experiments/fedma_real_demo.py --methods fedavg,fedavgm --rounds 12
  python experiments/fedma_real_demo.py --override model.lm_dtype=bfloat16
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from fedjax_mm import config_files, metrics
from fedjax_mm.data import federated
from fedjax_mm.experiment import labels, methods, overrides, plots, references
from fedjax_mm.setups import fedma_real
from fedjax_mm.simulation import driver, validation

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/real_demo")
  parser.add_argument("--preset", default="cpu", help="configs/fedma_real.py preset")
  parser.add_argument("--rounds", type=int, default=None, help="default: the config's")
  parser.add_argument("--methods", default="fedavg", type=methods.methods_arg,
                      help=f"comma-separated, of {tuple(methods.METHODS)}")
  parser.add_argument("--central-batch", type=int, default=16)
  parser.add_argument("--captions", type=int, default=4,
                      help="greedy captions shown per source")
  parser.add_argument("--bf16-check", action="store_true",
                      help="also score the first method's projector with bf16 frozen towers")
  parser.add_argument("--override", action="append", default=[],
                      help="config override key=value, parsed by the field's type as "
                           "fedjax_mm.main's --config.key=value; repeatable")
  args = parser.parse_args()
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()

  def config_for(method: str = "fedavg"):
    config = config_files.load(ROOT / "configs/fedma_real.py", args.preset)
    if args.rounds:
      config.num_rounds = args.rounds
    config = overrides.apply_values(config, methods.METHODS[method].overrides)
    config = overrides.apply(config, args.override)
    validation.validate(config)
    return config

  try:   # a bad --override is a one-line usage error, before any compute
    config = config_for()
  except ValueError as e:
    parser.error(str(e))
  timings = {}
  print("== frozen towers: EfficientNet-Lite0 (ImageNet) and SmolLM2-135M-Instruct (GGUF)")
  tick = time.perf_counter()
  towers = fedma_real.build_towers(config)
  timings["towers"] = time.perf_counter() - tick
  print("== clients' data: Fashion-MNIST + Tux Paint stamps, partition, feature cache")
  tick = time.perf_counter()
  setup = fedma_real.build(config, towers=towers)
  stamps = fedma_real.stamp_test(config, towers) if config.data.captioned else None
  timings["data"] = time.perf_counter() - tick
  print(f"   {json.dumps({k: setup.info[k] for k in ('train_rows', 'test_rows')})}")
  task = setup.task
  evaluate = references.evaluator(task, setup.test, config.eval_batch_size)
  evaluate_stamps = None
  if stamps is not None:
    rows = {k: stamps[k] for k in ("vis", "tokens", "has_caption")}
    evaluate_stamps = references.evaluator(
        task, federated.pack(rows, np.zeros(len(rows["vis"]), np.int32), 1),
        config.eval_batch_size)

  def scored(trainable, final: dict | None = None) -> dict:
    """The evaluation summary (``final``: a run's last-round one, same test rows, reused)
    with the held-out stamps' caption loss."""
    tick = time.perf_counter()
    s = ({k.removeprefix("eval_"): v for k, v in final.items() if k.startswith("eval_")}
         if final else evaluate(trainable))
    if evaluate_stamps is not None:
      s = {**s, "stamps_loss": evaluate_stamps(trainable)["loss"]}
    timings[f"eval_{len(timings)}"] = time.perf_counter() - tick
    return s

  def row(name: str, s: dict) -> dict:
    out = {"method": name, "zero_shot_acc": s["accuracy"], "caption_loss": s["loss"],
           "client_worst10%": s["client_accuracy_worst10"]}
    return {**out, **({"stamps_loss": s["stamps_loss"]} if "stamps_loss" in s else {})}

  print("== floor: the untrained projector")
  floor_ref = references.floor(task, config.seed, scored)
  init, floor = floor_ref.trainable, row("floor (untrained projector)", floor_ref.summary)
  print(f"   {floor}")
  steps = references.budget_steps(config, args.central_batch)
  print(f"== centralized: {steps} steps x batch {args.central_batch} = "
        f"{references.example_budget(config)} examples (the federated budget)")
  tick = time.perf_counter()
  central_ref = references.centralized(config, task, setup.train, scored,
                                       batch_size=args.central_batch, progress=True)
  timings["centralized"] = time.perf_counter() - tick
  central = central_ref.trainable
  ceiling = row("centralized (same example budget)", central_ref.summary)
  print(f"   {ceiling}")

  runs, curves, projectors = [], {}, {}
  for method in args.methods:
    config = config_for(method)
    label = f"{labels.method_label(config)}, {labels.data_label(config, 'dirichlet')}"
    print(f"== {label}: {config.data.num_clients} clients, {config.clients_per_round} per "
          f"round, {config.num_rounds} rounds")
    tick = time.perf_counter()
    rundir = workdir / method
    shutil.rmtree(rundir, ignore_errors=True)   # the demo trains from scratch
    summary, trained = driver.train_and_evaluate(config, str(rundir), setup=setup,
                                                 return_trainable=True)
    timings[f"federated_{method}"] = time.perf_counter() - tick
    runs.append(row(label, scored(trained, summary["final"])))
    projectors[label] = trained
    curves[label] = plots.curve(floor["zero_shot_acc"], metrics.read(rundir))

  if args.bf16_check and config.model.lm_dtype != "bfloat16":
    # The accuracy effect of bf16 towers: the same trained projector, scored
    # with the frozen LM stored and run in bfloat16.
    print("== the first method's projector under bf16 frozen towers")
    config16 = config_for(args.methods[0])
    config16.model.lm_dtype = "bfloat16"
    task16 = fedma_real.make_task(config16, fedma_real.with_lm_dtype(towers, "bfloat16"))
    s16 = references.evaluator(task16, setup.test, config.eval_batch_size)(
        projectors[runs[0]["method"]])
    runs.append({"method": runs[0]["method"] + " (bf16 towers, eval)",
                 "zero_shot_acc": s16["accuracy"], "caption_loss": s16["loss"],
                 "client_worst10%": s16["client_accuracy_worst10"],
                 **({"stamps_loss": float("nan")} if stamps is not None else {})})

  print("== greedy captions of held-out images")
  first = runs[0]["method"]
  samples = []
  sources = [("Fashion-MNIST", setup.test.examples["vis"], setup.test.examples["tokens"])]
  if stamps is not None:
    sources.append(("Tux Paint", stamps["vis"], stamps["tokens"]))
  for source, vis, tokens in sources:
    picks = np.linspace(0, len(vis) - 1, args.captions).astype(int)
    truth = [towers.tokenizer.decode([t for t in tokens[i].tolist()
                                      if t not in towers.special.stop_ids()]) for i in picks]
    got = {name: fedma_real.generate_captions(config, towers, p, vis[picks])
           for name, p in (("floor", init), (first, projectors[first]),
                           ("centralized", central))}
    for j, i in enumerate(picks):
      samples.append({"source": source, "row": int(i), "truth": truth[j],
                      **{name: got[name][j] for name in got}})

  rows = [floor] + runs + [ceiling]
  table = metrics.format_table(rows, list(rows[0]))
  timings["total"] = time.perf_counter() - started
  caption_lines = "\n".join(
      f"- [{s['source']}] truth: {s['truth']!r} | floor: {s['floor']!r} | {first}: "
      f"{s[first]!r} | centralized: {s['centralized']!r}" for s in samples)
  text = ("Fed-MA on real towers (EfficientNet-Lite0 -> mlp2x_gelu projector -> SmolLM2-135M) "
          "and real data: zero-shot Fashion-MNIST classification by caption likelihood over "
          "the ten class captions (chance 0.10) and caption loss on the clients' held-out "
          f"Fashion-MNIST rows; stamps_loss on the held-out Tux Paint stamps.\n\n```\n{table}\n"
          f"```\n\nGreedy captions of held-out images:\n\n{caption_lines}\n\nwall time (s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + "\n")
  (workdir / "results.md").write_text(text)
  (workdir / "results.json").write_text(json.dumps(
      {"rows": rows, "captions": samples, "timings": timings, "setup": setup.info,
       "config": json.loads(config.to_json_best_effort())}, indent=2, default=str))
  plots.accuracy_plot(
      workdir / "accuracy.png", curves,
      [plots.Line(0.1, "chance (0.10)"),
       plots.Line(ceiling["zero_shot_acc"], "centralized", "black", "--")],
      ylabel="zero-shot accuracy (held-out Fashion-MNIST)", ylim=(0, 1),
      title="Fed-MA, real towers: EfficientNet-Lite0 -> SmolLM2-135M")
  print("\n" + text)
  print(f"results: {workdir / 'results.md'}\nplot:    {workdir / 'accuracy.png'}")


if __name__ == "__main__":
  main()
