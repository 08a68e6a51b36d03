"""End-to-end alignment probe: pretrain towers, cache features, train a projector.

Centralized LLaVA stage-1 on the shapes world, to check that the frozen towers
are good enough for Fed-MA before any federated run:

1. generate the public splits (images for the ViT, paraphrase-pair text for
   the LM) and a paired split (train / held-out with probes);
2. pretrain (or load from the cache) both towers with the default configs;
3. cache the ViT features of the paired split;
4. zero-shot alignment accuracy of an untrained projector (the floor);
5. train a projector centrally (Adam) on the captioning (default) or
   contrastive objective;
6. held-out alignment accuracy, overall and per attribute.

Prints the time of each phase. Usage::

  python experiments/probe_alignment.py [--steps 1000] [--cache_dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_mm.data import captions, world
from fedjax_mm.models import mllm, towers


def _labels(scenes: world.Scenes) -> dict[str, np.ndarray]:
  """Vision pretraining targets: every fact a caption states (-1: absent)."""
  labels = {k: np.asarray(v) for k, v in scenes.attributes().items()}
  has = np.asarray(scenes.has_distractor)
  labels["has_distractor"] = has.astype(np.int32)
  for k in ("d_shape", "d_color", "d_size", "d_position"):
    labels[k] = np.where(has, getattr(scenes, k), -1).astype(np.int32)
  return labels


def _evaluate(task, trainable, batch, batch_size: int = 250) -> dict[str, float]:
  metrics_fn = jax.jit(task.per_example_metrics)
  n = batch["tokens"].shape[0]
  sums: dict[str, float] = {}
  for i in range(0, n - n % batch_size, batch_size):
    part = jax.tree.map(lambda a: a[i:i + batch_size], batch)
    for k, v in metrics_fn(trainable, task.frozen, part).items():
      sums[k] = sums.get(k, 0.0) + float(jnp.sum(v))
  out = {"loss": sums["loss"] / n, "accuracy": sums["accuracy"] / n}
  for name in world.ATTRIBUTES:
    out[name] = sums[f"acc_{name}"] / max(sums[f"n_{name}"], 1.0)
  return out


def _train_projector(task, batch, *, steps: int, batch_size: int, lr: float, seed: int):
  tx = optax.adam(lr)
  key = jax.random.key(seed)
  trainable = task.init_trainable(jax.random.fold_in(key, 0))
  n = batch["tokens"].shape[0]
  chunk = 50 if steps % 50 == 0 else 1

  @jax.jit
  def run(trainable, opt_state, start):
    def step(carry, i):
      params, opt_state = carry
      idx = jax.random.randint(jax.random.fold_in(key, i + 1), (batch_size,), 0, n)
      b = jax.tree.map(lambda a: a[idx], batch)
      loss_fn = lambda p: jnp.mean(task.per_example_loss(p, task.frozen, b))
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (trainable, opt_state), losses = jax.lax.scan(step, (trainable, opt_state),
                                                  start + jnp.arange(chunk))
    return trainable, opt_state, losses.mean()

  opt_state = tx.init(trainable)
  losses = []
  for start in range(0, steps, chunk):
    trainable, opt_state, loss = run(trainable, opt_state, start)
    losses.append(float(loss))
  return trainable, losses


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cache_dir", default="/tmp/fedjax_mm_towers")
  parser.add_argument("--num_public_images", type=int, default=20000)
  parser.add_argument("--num_lm_pairs", type=int, default=50000)
  parser.add_argument("--num_train", type=int, default=8000)
  parser.add_argument("--num_eval", type=int, default=1000)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--projector", default="mlp2x_gelu")
  parser.add_argument("--pool_to", type=int, default=None)
  parser.add_argument("--objective", default="captioning", choices=mllm.OBJECTIVES)
  parser.add_argument("--temperature", type=float, default=0.07)
  parser.add_argument("--vision_steps", type=int, default=None)
  parser.add_argument("--lm_steps", type=int, default=None)
  parser.add_argument("--bf16", action="store_true", help="cache features in bfloat16")
  args = parser.parse_args()
  times = {}
  spec = world.WorldSpec()
  tokenizer = world.make_tokenizer()

  t = time.time()
  public = world.generate(spec, seed=101, n=args.num_public_images)
  text_attrs = world.sample_attributes(spec, np.random.default_rng(102), args.num_lm_pairs)
  pairs = captions.paraphrase_pairs(tokenizer, text_attrs, np.random.default_rng(103))
  paired = world.generate(spec, seed=104, n=args.num_train + args.num_eval)
  rng = np.random.default_rng(105)
  styles = rng.integers(0, len(world.STYLES), args.num_train + args.num_eval)
  attrs = {k: np.asarray(v) for k, v in paired._asdict().items() if k != "images"}
  tokens = captions.render(tokenizer, attrs, styles)
  ev = slice(args.num_train, None)
  probes, probe_attr = captions.probes(tokenizer, {k: v[ev] for k, v in attrs.items()},
                                       styles[ev], rng)
  times["data"] = time.time() - t

  vcfg = towers.VisionConfig(
      data_tag=f"{spec}/radii{world.RADII}/seed101/n{args.num_public_images}")
  if args.vision_steps:
    vcfg = dataclasses.replace(vcfg, steps=args.vision_steps)
  lcfg = towers.LMConfig(vocab_size=tokenizer.vocab_size,
                         data_tag=f"{spec}/seed102-103/n{args.num_lm_pairs}")
  if args.lm_steps:
    lcfg = dataclasses.replace(lcfg, steps=args.lm_steps)
  t = time.time()
  vit_params = towers.cached_params(
      args.cache_dir, "vit", vcfg, lambda: towers.pretrain_vision(public.images, _labels(public), vcfg),
      towers.abstract_vit_params(vcfg))
  times["vision pretraining (or load)"] = time.time() - t
  t = time.time()
  lm_params = towers.cached_params(
      args.cache_dir, "lm", lcfg, lambda: towers.pretrain_lm(pairs, lcfg),
      towers.abstract_lm_params(lcfg))
  times["LM pretraining (or load)"] = time.time() - t

  t = time.time()
  dtype = jnp.bfloat16 if args.bf16 else jnp.float32
  vis = mllm.encode_images(vcfg.module(), vit_params, paired.images, 500, dtype).block_until_ready()
  times["feature caching"] = time.time() - t
  has_caption = jnp.ones(tokens.shape[:1], jnp.bool_)
  train = {"vis": vis[:args.num_train], "tokens": jnp.asarray(tokens[:args.num_train]),
           "has_caption": has_caption[:args.num_train]}
  held = {"vis": vis[ev], "tokens": jnp.asarray(tokens[ev]), "has_caption": has_caption[ev],
          "probes": jnp.asarray(probes), "probe_attr": jnp.asarray(probe_attr)}
  task = mllm.fedma_task(lcfg.module(), lm_params, vis_dim=vcfg.width,
                         num_vis_tokens=vcfg.module().num_tokens, projector_kind=args.projector,
                         pool_to=args.pool_to, objective=args.objective,
                         temperature=args.temperature, attribute_names=world.ATTRIBUTES)

  t = time.time()
  before = _evaluate(task, task.init_trainable(jax.random.key(0)), held)
  times["eval (floor)"] = time.time() - t
  t = time.time()
  trainable, losses = _train_projector(task, train, steps=args.steps, batch_size=args.batch_size,
                                       lr=args.lr, seed=0)
  times[f"projector training ({args.steps} steps)"] = time.time() - t
  t = time.time()
  after = _evaluate(task, trainable, held)
  times["eval (trained)"] = time.time() - t

  print(f"\n{args.objective}: projector {args.projector}, pool_to={args.pool_to}, {args.steps} steps, "
        f"batch {args.batch_size}, Adam {args.lr}; held-out {args.num_eval} scenes")
  print(f"train loss: first 50 steps {losses[0]:.3f}, last 50 steps {losses[-1]:.3f}")
  print(f"{'metric':>12} {'floor':>8} {'trained':>8}")
  for k in before:
    print(f"{k:>12} {before[k]:8.3f} {after[k]:8.3f}")
  print("\nphase timings (s):")
  for k, v in times.items():
    print(f"  {k:<36} {v:7.1f}")


if __name__ == "__main__":
  main()
