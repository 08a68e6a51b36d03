"""Centralized alignment probe: are the frozen towers good enough for Fed-MA?

Before any federated run, train the projector centrally on the union of the
clients' training rows of a Fed-MA config and report held-out zero-shot
alignment accuracy, overall and per attribute, against the untrained
projector. Everything comes from the project's own pieces: the config
(``configs/fedma.py``, IID clients, mixed caption styles), ``setups.fedma``
(towers pretrained or loaded from the cache, feature cache),
``centralized.train`` and ``evaluation``. Use it to check a change of the
world or of a tower recipe. Prints the time of each phase. Usage::

  python experiments/probe_alignment.py [--steps 1500] [--objective contrastive]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import optax

from fedjax_mm import centralized, config_files, evaluation
from fedjax_mm.simulation import validation
from fedjax_mm.data import world
from fedjax_mm.models import mllm
from fedjax_mm.setups import fedma

ROOT = Path(__file__).resolve().parents[1]


def load_config():
  config = config_files.load(ROOT / "configs/fedma.py", "iid")
  config.data.partition.style_mode = "iid"   # every caption style, mixed
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cache_dir", default="", help="towers cache ('': the default)")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--projector", default="mlp2x_gelu")
  parser.add_argument("--pool_to", type=int, default=0, help="0: keep every visual token")
  parser.add_argument("--objective", default="captioning", choices=mllm.OBJECTIVES)
  parser.add_argument("--temperature", type=float, default=0.07)
  parser.add_argument("--vision_steps", type=int, default=None)
  parser.add_argument("--lm_steps", type=int, default=None)
  parser.add_argument("--bf16", action="store_true", help="cache features in bfloat16")
  args = parser.parse_args()

  config = load_config()
  config.model.cache_dir = args.cache_dir
  config.model.projector.kind = args.projector
  config.model.projector.pool_to = args.pool_to
  config.model.objective = args.objective
  config.model.temperature = args.temperature
  config.data.feature_dtype = "bfloat16" if args.bf16 else "float32"
  if args.vision_steps:
    config.model.vision.steps = args.vision_steps
  if args.lm_steps:
    config.model.lm.steps = args.lm_steps
  validation.validate(config)

  times = {}
  setup = fedma.build(config)
  times["towers (or load)"] = setup.info["towers_seconds"]
  times["clients' data + feature cache"] = setup.info["data_seconds"]
  eval_fn = jax.jit(evaluation.build_eval_fn(setup.task, setup.test, config.eval_batch_size))
  test = jax.device_put(setup.test)

  def evaluate(trainable) -> dict[str, float]:
    summary = evaluation.summarize(jax.device_get(eval_fn(trainable, test)))
    return {"loss": summary["loss"], "accuracy": summary["accuracy"],
            **{name: summary[f"acc_{name}"] for name in world.ATTRIBUTES}}

  init = setup.task.init_trainable(jax.random.key(config.seed))
  t = time.time()
  before = evaluate(init)
  times["eval (floor)"] = time.time() - t
  t = time.time()
  trained = centralized.train(setup.task, setup.train, num_steps=args.steps,
                              batch_size=args.batch_size, optimizer=optax.adam(args.lr),
                              seed=config.seed, trainable=init, progress=True)
  times[f"projector training ({args.steps} steps)"] = time.time() - t
  t = time.time()
  after = evaluate(trained)
  times["eval (trained)"] = time.time() - t

  print(f"\n{args.objective}: projector {args.projector}, pool_to={args.pool_to}, "
        f"{args.steps} steps, batch {args.batch_size}, Adam {args.lr}; held-out rows of "
        f"{config.data.eval_clients} clients")
  print(f"{'metric':>12} {'floor':>8} {'trained':>8}")
  for k in before:
    print(f"{k:>12} {before[k]:8.3f} {after[k]:8.3f}")
  print("\nphase timings (s):")
  for k, v in times.items():
    print(f"  {k:<36} {v:7.1f}")


if __name__ == "__main__":
  main()
