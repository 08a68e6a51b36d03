"""Throughput of the real Fed-MA towers and of one federated round, against matmul.

Synthetic inputs of the real setup's shapes (``configs/fedma_real.py``): no
dataset, only the weights fetched by ``scripts/fetch_real.sh``. Rows:

* ``matmul n``: float32 ``jnp.dot`` of n x n matrices, timed at the start and
  the end of the run; the median of all n = 2048 samples is the baseline that
  ``frac mm`` (achieved GFLOP/s / baseline GFLOP/s) divides by.
* ``vision``: EfficientNet-Lite0 feature map of 224 px uint8 images, batch 32
  (float32 whatever ``--dtype``: the tower casts its input to float32).
* ``lm fwd V=v``: caption loss of the frozen SmolLM2 on ``[bos] + v visual
  tokens + prompt + 12 caption tokens``, batch 8; ``lm grad``: its gradient
  w.r.t. the projector only (through the LM, no LM weight gradients).
* ``round``: one FedAvg round, K=20 clients of 30-50 rows, cohort 10, 4 local
  Adam(1e-3) steps of batch 8, server SGD(1); items = examples trained.

FLOPs: XLA's cost analysis counts a ``lax.scan`` body once, not per iteration
(the LM's layers and the local steps are scans), so each program is lowered
with every scan unrolled for a 1- and a 2-layer LM and the count extrapolated
linearly to the LM's depth (exact: the cost is affine in it). The analytic
2 x non-embedding params x LM input tokens is printed beside it.

CPU numbers are noisy (shared cores): times are medians over repeats after a
warm-up call (none for the AOT-compiled round); compare the ``frac mm`` ratios,
and note the load average printed with them. With JAX_PLATFORMS=cpu:

  python experiments/bench_real.py --quick
  python experiments/bench_real.py --json experiments/results/bench_real.json
  python experiments/bench_real.py --lm-layers 4 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_mm import client as client_lib, config_files
from fedjax_mm.data import federated
from fedjax_mm.real import efficientnet, smollm
from fedjax_mm.setups import fedma_real
from fedjax_mm.simulation import round as round_lib

ROOT = Path(__file__).resolve().parents[1]
CAPTION_TOKENS, LM_BATCH, VISION_BATCH = 12, 8, 32
NUM_CLIENTS, COHORT, STEPS = 20, 10, 4
Program = tuple[Callable[..., Any], tuple]        # (function, its arguments)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
  """Wall times of ``repeats`` calls, each blocked on, after an untimed (compiling) call."""
  times = []
  for _ in range(repeats + warmup):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times[warmup:]


def xla_flops(fn: Callable[..., Any], args: tuple) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  # A dict in jax 0.10; a list with one dict per module in older versions.
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


@contextlib.contextmanager
def unrolled_scans():
  """Unrolls every ``jax.lax.scan`` traced inside, so cost analysis sees each iteration."""
  scan, jax.lax.scan = jax.lax.scan, functools.partial(jax.lax.scan, unroll=True)
  try:
    yield
  finally:
    jax.lax.scan = scan


def with_lm(towers: fedma_real.Towers, layers: int, dtype: Any) -> fedma_real.Towers:
  """The towers with the LM cut to its first ``layers`` blocks and stored/computed in ``dtype``."""
  params = jax.tree.map(lambda p: p.astype(dtype), dict(
      towers.lm_params, layers=jax.tree.map(lambda p: p[:layers], towers.lm_params["layers"])))
  return towers._replace(lm=smollm.Llama(towers.lm.config, num_layers=layers, dtype=dtype),
                         lm_params=params)


def depth_flops(make: Callable[[fedma_real.Towers], Program], towers: fedma_real.Towers,
                layers: int) -> float:
  """XLA FLOPs of ``make(towers)`` at LM depth ``layers``, from unrolled 1- and 2-layer programs."""
  # make() builds fresh closures: jax.jit caches traces per function object, and
  # a cached (rolled) trace would hide the unrolling.
  with unrolled_scans():
    counts = [xla_flops(*make(with_lm(towers, k, towers.lm.dtype)))
              for k in range(1, min(layers, 2) + 1)]
  if layers > 1 and counts[1] <= counts[0]:   # e.g. `from jax.lax import scan`: not unrolled
    raise RuntimeError(f"cost analysis did not see the second layer: {counts} FLOPs")
  return counts[0] + (layers - 1) * (counts[-1] - counts[0])


def synthetic_rows(rng: np.random.Generator, n: int, v: int,
                   special: Any, vocab: int) -> dict[str, np.ndarray]:
  """``n`` rows: features in [0, 1), 6-11 random words + ``<|endoftext|>`` + pad."""
  words = rng.integers(6, CAPTION_TOKENS, n)[:, None]
  tokens = rng.integers(100, vocab, (n, CAPTION_TOKENS)).astype(np.int32)  # no special ids
  cols = np.arange(CAPTION_TOKENS)
  tokens = np.where(cols == words, special.endoftext, np.where(cols > words, special.pad, tokens))
  return {"vis": rng.random((n, v, efficientnet.FEATURE_DIM), np.float32),
          "tokens": tokens.astype(np.int32), "has_caption": np.ones(n, bool)}


def row(name: str, times: list[float], items: int, flops: float, **extra: Any) -> dict:
  """One measurement: ``items`` per call, ``flops`` per call."""
  med = float(np.median(times))
  return {"name": name, "times_s": times, "median_s": med, "items_per_s": items / med,
          "gflop_per_item": flops / items / 1e9, "gflop_per_s": flops / med / 1e9, **extra}


def matmul_rows(sizes: tuple[int, ...], repeats: int, tag: str) -> list[dict]:
  dot, out = jax.jit(jnp.dot), []
  for n in sizes:
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32) for i in (0, 1))
    out.append(row(f"matmul {n} f32 ({tag})", timed(lambda: dot(a, b), repeats), 1, 2.0 * n**3))
  return out


def vision_row(towers: fedma_real.Towers, repeats: int, rng: np.random.Generator) -> dict:
  model = efficientnet.EfficientNetLite0()
  fn = lambda var, img: model.apply(var, efficientnet.preprocess(img), method="features")
  images = jnp.asarray(rng.integers(0, 256, (VISION_BATCH, 224, 224, 3), np.uint8))
  times = timed(functools.partial(jax.jit(fn), towers.vision, images), repeats)
  return row("vision effnet-lite0 224px", times, VISION_BATCH,
             xla_flops(fn, (towers.vision, images)), batch=VISION_BATCH)


def lm_rows(config: Any, towers: fedma_real.Towers, v: int, repeats: int,
            rng: np.random.Generator, other_dtype: Any = None) -> list[dict]:
  """Forward and projector-gradient rows (and optionally a forward in ``other_dtype``)."""
  config = copy.deepcopy(config)
  config.model.vision_tokens = v
  batch = jax.device_put(synthetic_rows(rng, LM_BATCH, v, towers.special,
                                        towers.lm.config.vocab_size))
  trainable = fedma_real.make_task(config, towers).init_trainable(jax.random.key(0))
  cfg, layers = towers.lm.config, towers.lm.num_layers or towers.lm.config.num_layers
  per_layer = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(towers.lm_params["layers"]))
  seq = 1 + v + len(fedma_real.layout(config, towers).sep) + CAPTION_TOKENS - 1  # LM input
  # 2 x non-embedding params x tokens, and the tied unembedding at every position.
  analytic = 2.0 * (layers * per_layer + cfg.width) * seq
  unembed = 2.0 * cfg.width * cfg.vocab_size * seq

  def forward(t: fedma_real.Towers) -> Program:
    task = fedma_real.make_task(config, t)
    return (lambda tr, fr, b: task.per_example_loss(tr, fr, b)), (trainable, task.frozen, batch)

  def gradient(t: fedma_real.Towers) -> Program:
    task = fedma_real.make_task(config, t)
    # Only the projector is an argument of grad: the LM is a constant of it.
    fn = lambda tr, fr, b: jax.grad(lambda p: jnp.mean(task.per_example_loss(p, fr, b)))(tr)
    return fn, (trainable, task.frozen, batch)

  out, flops = [], {}
  # The backward pass w.r.t. activations only costs about one more forward.
  variants = [("fwd", forward, towers, 1.0), ("grad", gradient, towers, 2.0)]
  if other_dtype is not None:
    variants.append(("fwd", forward, with_lm(towers, layers, other_dtype), 1.0))
  for kind, make, t, factor in variants:
    fn, args = make(t)
    times = timed(functools.partial(jax.jit(fn), *args), repeats)
    if kind not in flops:                     # the same count in either dtype
      flops[kind] = depth_flops(make, towers, layers)
    out.append(row(f"lm {kind} V={v} {jnp.dtype(t.lm.dtype).name}", times, LM_BATCH,
                   flops[kind], batch=LM_BATCH, seq=seq,
                   analytic_gflop_per_item=factor * analytic / 1e9,
                   analytic_unembed_gflop_per_item=factor * unembed / 1e9))
  return out


def round_row(config: Any, towers: fedma_real.Towers, repeats: int,
              rng: np.random.Generator) -> dict:
  sizes = rng.integers(30, 51, NUM_CLIENTS)
  rows = synthetic_rows(rng, int(sizes.sum()), config.model.vision_tokens, towers.special,
                        towers.lm.config.vocab_size)
  data = jax.device_put(federated.pack(rows, np.repeat(np.arange(NUM_CLIENTS), sizes),
                                       NUM_CLIENTS))
  spec = round_lib.RoundSpec(num_clients=NUM_CLIENTS, cohort_size=COHORT, chunk_size=0,
                             schedule=federated.LocalSchedule("steps", STEPS, LM_BATCH))
  server_tx = optax.sgd(1.0)

  def make(t: fedma_real.Towers) -> Program:
    task = fedma_real.make_task(config, t)
    fn = round_lib.build_round_fn(task, spec, server_tx,
                                  client_lib.make_client_optimizer("adam"), 1e-3)
    state = round_lib.init_server_state(task, server_tx, seed=0)
    return fn, (state, round_lib.init_population(task, NUM_CLIENTS), data,
                jnp.asarray(sizes, jnp.float32), None, task.frozen)

  fn, args = make(towers)
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(*args).compile()
  compile_s = time.perf_counter() - start
  carry = list(args[:2])

  def one_round() -> Any:           # the state is donated: thread it through
    carry[0], carry[1], metrics = compiled(*carry, *args[2:])
    return carry, metrics

  # No warm-up: nothing is left to compile, and a round takes minutes on a CPU.
  times = timed(one_round, repeats, warmup=0)
  layers = towers.lm.num_layers or towers.lm.config.num_layers
  return row(f"round fedavg V={config.model.vision_tokens}", times, COHORT * STEPS * LM_BATCH,
             depth_flops(make, towers, layers), batch=LM_BATCH, compile_s=compile_s,
             cohort=COHORT, steps=STEPS, clients=NUM_CLIENTS)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lm-layers", type=int, default=fedma_real.LM_LAYERS, help="first k blocks")
  p.add_argument("--dtype", choices=tuple(fedma_real.LM_DTYPES), default="float32",
                 help="LM compute and weight dtype (the vision tower is float32 regardless)")
  p.add_argument("--quick", action="store_true", help="one timed repeat per figure")
  p.add_argument("--json", type=Path, help="also write every figure to this file")
  args = p.parse_args()
  started, load_start = time.perf_counter(), os.getloadavg()
  repeats, rng = (1 if args.quick else 3), np.random.default_rng(0)
  config = config_files.load(ROOT / "configs/fedma_real.py", "cpu")
  config.model.lm_layers, config.model.lm_dtype = args.lm_layers, args.dtype
  towers = fedma_real.build_towers(config)
  other = {"float32": jnp.bfloat16, "bfloat16": jnp.float32}[args.dtype]
  step = lambda msg: print(f"  [{time.perf_counter() - started:6.0f} s] {msg}", flush=True)
  step("matmul");  rows = matmul_rows((2048, 1024), repeats + 2, "start")
  step("vision");  rows.append(vision_row(towers, repeats, rng))
  step("lm V=1");  rows += lm_rows(config, towers, 1, repeats, rng, other_dtype=other)
  step("lm V=49"); rows += lm_rows(config, towers, 49, repeats, rng)
  step("round");   rows.append(round_row(config, towers, repeats, rng))
  step("matmul");  rows += matmul_rows((2048, 1024), repeats + 2, "end")
  mm = {n: 2.0 * n**3 / 1e9 / float(np.median([t for r in rows if r["name"].startswith(
      f"matmul {n}") for t in r["times_s"]])) for n in (2048, 1024)}
  base_gflops = mm[2048]
  for r in rows:
    r["frac_of_matmul"] = r["gflop_per_s"] / base_gflops
  load_end = os.getloadavg()
  print(f"\nReal Fed-MA towers, SmolLM2 {args.lm_layers} layers {args.dtype}, jax "
        f"{jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores); "
        f"load average {load_start[0]:.2f} -> {load_end[0]:.2f}; medians of {repeats}+ calls.")
  cols = ("measurement", "median s", "items/s", "GFLOP/item", "2NT", "+unembed", "GFLOP/s",
          "frac mm")
  line = "{:<28}" + " {:>10}" * (len(cols) - 1)
  print(line.format(*cols) + "\n" + "-" * (28 + 11 * (len(cols) - 1)))
  for r in rows:
    analytic = [f"{r[k]:.3f}" if k in r else "-" for k in (
        "analytic_gflop_per_item", "analytic_unembed_gflop_per_item")]
    print(line.format(r["name"], f"{r['median_s']:.3f}", f"{r['items_per_s']:.2f}",
                      f"{r['gflop_per_item']:.3f}", *analytic, f"{r['gflop_per_s']:.1f}",
                      f"{r['frac_of_matmul']:.2f}"))
  rnd = next(r for r in rows if "compile_s" in r)
  print(f"frac mm: of matmul 2048 f32, {base_gflops:.1f} GFLOP/s (1024: {mm[1024]:.1f}; medians "
        f"of start+end samples). Round compile {rnd['compile_s']:.1f} s.\nItems: images "
        f"(vision), examples (lm, round). GFLOP/item: XLA cost analysis, scans unrolled; "
        f"2NT: analytic 2 x non-embedding params x LM input tokens (x2 for grad);\n+unembed: "
        f"the tied unembedding at every position, which XLA's count includes.")
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "real", "jax_version": jax.__version__, "cpu_count": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_end},
        "options": {"lm_layers": args.lm_layers, "dtype": args.dtype, "quick": args.quick},
        "matmul_gflop_per_s": mm, "rows": rows,
        "total_s": time.perf_counter() - started}, indent=1))


if __name__ == "__main__":
  main()
