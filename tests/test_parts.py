"""The contract every algorithm and aggregator passes inside a round.

One suite, run over every algorithm x aggregator pairing the config can
build: the round jits and is traced once, padding clients are ignored
(chunked = unchunked with padding), state survives a checkpoint round trip
(and the resumed run continues bit for bit), same seed gives the same bits,
and NaN/Inf clients never reach the aggregate. Plus the memory cap of the
whole-cohort path and the merging of part metrics.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_mm import aggregation, algorithms
from fedjax_mm import checkpoint as checkpoint_lib
from fedjax_mm import client as client_lib
from fedjax_mm.data import federated, synthetic
from fedjax_mm.models import logreg
from fedjax_mm.simulation import round as round_lib

K = 24
TASK = logreg.task(60, 10)
COHORT = 7
# Compile fast (the rounds are tiny): XLA's backend optimizations cost more
# compile time than they save here, and the checks are about semantics.
FAST = {"compiler_options": {"xla_backend_optimization_level": 0}}

ALGORITHMS = {
    "fedavg": algorithms.fedavg(),
    "fedprox": algorithms.fedprox(0.1),
    "scaffold": algorithms.scaffold(),
    "fednova": algorithms.fednova(0.0),
}
AGGREGATORS = {kind: aggregation.make_aggregator(kind, cohort_size=COHORT, num_byzantine=1,
                                                 trim_fraction=0.2)
               for kind in aggregation.AGGREGATORS}
# Every algorithm with the mean, every aggregator with SCAFFOLD (the part
# with the most state), and clipping in front of one whole-cohort reduction.
CASES = ([(a, "mean", False) for a in ALGORITHMS]
         # (TIES is KnOTS's merge without the basis: its masking is tested
         # in test_merging, its round contract through KnOTS.)
         + [("scaffold", g, False) for g in AGGREGATORS if g not in ("mean", "ties")]
         + [("fedavg", "trimmed_mean", True)])
IDS = [f"{a}-{g}{'-clip' if c else ''}" for a, g, c in CASES]


@pytest.fixture(scope="module")
def train():
  data = synthetic.generate(0, K, size_mean=2.0, size_sigma=1.0, min_size=3, max_size=40)
  return jax.device_put(federated.split_by_position(data, 0.9)[0])


def _build(case, chunk=0, tx=optax.sgd(1.0)):
  name, kind, clip = case
  parts = dict(algorithm=ALGORITHMS[name], aggregator=AGGREGATORS[kind],
               preprocessors=(aggregation.l2_clip(0.05),) if clip else ())
  spec = round_lib.RoundSpec(num_clients=K, cohort_size=COHORT, chunk_size=chunk,
                             schedule=federated.LocalSchedule("epochs", 6, 4, 1))
  fn = round_lib.build_round_fn(TASK, spec, tx, client_lib.make_client_optimizer("sgd"), 0.1,
                                **parts)
  state = round_lib.init_server_state(TASK, tx, seed=2, algorithm=parts["algorithm"],
                                      aggregator=parts["aggregator"])
  pop = round_lib.init_population(TASK, K, algorithm=parts["algorithm"])
  return fn, state, pop


def _rounds(fn, state, pop, train, n):
  weights = train.sizes.astype(jnp.float32)
  history = []
  for _ in range(n):
    state, pop, metrics = fn(state, pop, train, weights, None)
    history.append(metrics)
  return state, pop, history


def _bits(tree):
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype,
                                                                      jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_traced_once_deterministic_and_padding_free(train, case, tmp_path):
  chex.clear_trace_counter()
  fn, state, pop = _build(case)
  jitted = jax.jit(chex.assert_max_traces(fn, n=1), **FAST)
  a = _rounds(jitted, state, pop, train, 3)
  b = _rounds(jitted, state, pop, train, 3)
  assert jitted._cache_size() == 1
  for x, y in zip(_bits(a[:2]), _bits(b[:2])):   # same seed, same bits
    np.testing.assert_array_equal(x, y)
  # Server and population state through an orbax checkpoint: same bits, and
  # the next round from the restored state is the next round.
  run_state = {"server": a[0], "population": a[1]}
  with checkpoint_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, run_state, {"history": []}, force=True)
    restored, _ = ckpt.restore(None, checkpoint_lib.abstract_like(run_state))
  for x, y in zip(_bits(_rounds(jitted, a[0], a[1], train, 1)[:2]),
                  _bits(_rounds(jitted, restored["server"], restored["population"], train,
                                1)[:2])):
    np.testing.assert_array_equal(x, y)
  # Chunks of 3 pad the cohort of 7 with 2 weight-0 clients (id 0 repeated):
  # nothing of theirs may reach the aggregate, the metrics or the population.
  fn3, _, _ = _build(case, chunk=3)
  c = _rounds(jax.jit(fn3, **FAST), state, pop, train, 3)
  # The geometric median stops within tolerance * s * rho / (1 - rho) <= 1e-5 s
  # of the exact one (rho <= 1/2, s the median distance, <= 2 max ||delta|| =
  # 3.4 here): if a different stack size (9 padded rows vs 7) changed its last
  # iteration, each round's aggregate would move by <= 2 * 3.4e-5, 3 rounds
  # <= 2e-4 (SCAFFOLD's controls, ~10x the deltas, by the same share: rtol).
  # Measured: same iteration counts, 1.5e-8 (params) and 1.8e-7 (controls).
  # KnOTS trims coordinates in the eigenbasis of the cohort's Gram matrix:
  # rounding-level changes of the deltas (other chunk shapes) turn nearly
  # degenerate eigenvectors, and the trim is not rotation-invariant, so
  # entries near zero move by a few 1e-6 (observed 4e-6), never which rows count.
  tol = {"geometric_median": dict(rtol=2e-3, atol=2e-4),
         "knots": dict(rtol=2e-5, atol=2e-5)}.get(case[1], dict(rtol=2e-5, atol=1e-6))
  chex.assert_trees_all_close(a[0].trainable, c[0].trainable, **tol)
  chex.assert_trees_all_close(a[0].algorithm, c[0].algorithm, **tol)
  chex.assert_trees_all_close(a[1], c[1], **tol)
  for m, n in zip(a[2], c[2]):
    assert m.keys() == n.keys()
    np.testing.assert_allclose(float(m["train_loss"]), float(n["train_loss"]),
                               rtol=max(tol["rtol"], 1e-5))
    assert int(m["num_counted_clients"]) == int(n["num_counted_clients"]) == COHORT
  assert float(optax.tree.norm(a[0].trainable)) > 0  # it trained


@pytest.mark.parametrize("case", [CASES[2], CASES[-1]], ids=[IDS[2], IDS[-1]])
def test_state_round_trips_through_a_checkpoint(train, case, tmp_path):
  fn, state, pop = _build(case, tx=optax.adam(0.01))
  fn = jax.jit(fn, **FAST)
  state, pop, _ = _rounds(fn, state, pop, train, 2)
  run_state = {"server": state, "population": pop}
  with checkpoint_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(2, run_state, {"history": []}, force=True)
  with checkpoint_lib.Checkpointer(tmp_path) as ckpt:
    restored, _ = ckpt.restore(None, checkpoint_lib.abstract_like(run_state))
  for x, y in zip(_bits(run_state), _bits(restored)):
    np.testing.assert_array_equal(x, y)
  straight = _rounds(fn, state, pop, train, 2)
  resumed = _rounds(fn, restored["server"], restored["population"], train, 2)
  for x, y in zip(_bits(straight[:2]), _bits(resumed[:2])):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], ("scaffold", "krum", False)],
                         ids=["fedavg-mean", "scaffold-mean", "scaffold-krum"])
def test_nonfinite_client_never_reaches_the_aggregate(train, case):
  poisoned = 5
  x = np.asarray(train.examples["x"]).copy()
  start = int(train.offsets[poisoned])
  x[start:start + int(train.sizes[poisoned])] = np.inf
  bad = train.replace(examples={"x": jnp.asarray(x), "y": train.examples["y"]})
  spec = round_lib.RoundSpec(num_clients=K, cohort_size=K, chunk_size=8,
                             schedule=federated.LocalSchedule("epochs", 6, 4, 1))
  name, kind, _ = case
  kinds = {"mean": aggregation.weighted_mean(),
           "krum": aggregation.make_aggregator("krum", cohort_size=K, num_byzantine=2)}
  parts = dict(algorithm=ALGORITHMS[name], aggregator=kinds[kind])
  fn = jax.jit(round_lib.build_round_fn(TASK, spec, optax.sgd(1.0),
                                        client_lib.make_client_optimizer("sgd"), 0.1, **parts),
               **FAST)
  state = round_lib.init_server_state(TASK, optax.sgd(1.0), 0, **parts)
  pop = round_lib.init_population(TASK, K, algorithm=parts["algorithm"])
  state, pop, metrics = fn(state, pop, bad, bad.sizes.astype(jnp.float32), None)
  assert int(metrics["num_nonfinite_clients"]) == 1
  assert int(metrics["num_counted_clients"]) == K - 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(
      (state.trainable, state.opt_state, state.algorithm, pop.client)))
  if name == "scaffold":   # its control variate was not updated
    assert float(optax.tree.norm(jax.tree.map(lambda c: c[poisoned], pop.client))) == 0.0
    assert float(optax.tree.norm(jax.tree.map(lambda c: c[6], pop.client))) > 0.0


def test_whole_cohort_stack_over_the_cap_is_refused_naming_the_numbers():
  spec = round_lib.RoundSpec(num_clients=K, cohort_size=20, chunk_size=0,
                             schedule=federated.LocalSchedule("steps", 2, 4))
  build = lambda cap: round_lib.build_round_fn(
      TASK, spec, optax.sgd(1.0), client_lib.make_client_optimizer("sgd"), 0.1,
      aggregator=AGGREGATORS["median"], max_stack_bytes=cap)
  # logreg 60 -> 10: 610 float32 parameters; 20 clients -> 48,800 bytes.
  assert aggregation.base.stack_bytes(TASK.init_trainable(jax.random.key(0)), 20) == 48_800
  build(48_800)
  with pytest.raises(ValueError, match=r"'median' stacks the whole cohort: 20 clients x "
                                       r"610 parameters = 0\.0 MiB > the cap"):
    build(48_799)
  # A streaming aggregator never stacks: no cap applies.
  round_lib.build_round_fn(TASK, spec, optax.sgd(1.0), client_lib.make_client_optimizer("sgd"),
                           0.1, max_stack_bytes=1)


def test_part_metrics_are_prefixed_and_averaged_over_counted_clients(train):
  spec = round_lib.RoundSpec(num_clients=K, cohort_size=K, chunk_size=5,
                             schedule=federated.LocalSchedule("epochs", 6, 4, 1))
  clip = 0.05
  fn = jax.jit(round_lib.build_round_fn(
      TASK, spec, optax.sgd(1.0), client_lib.make_client_optimizer("sgd"), 0.1,
      algorithm=ALGORITHMS["scaffold"], aggregator=AGGREGATORS["krum"],
      preprocessors=(aggregation.l2_clip(clip),)), **FAST)
  state = round_lib.init_server_state(TASK, optax.sgd(1.0), 0, algorithm=ALGORITHMS["scaffold"])
  pop = round_lib.init_population(TASK, K, algorithm=ALGORITHMS["scaffold"])
  _, _, metrics = fn(state, pop, train, train.sizes.astype(jnp.float32), None)
  assert {"scaffold/client_control_norm", "scaffold/control_norm", "clip/clipped",
          "clip/norm", "krum/num_selected"} <= set(metrics)
  assert float(metrics["krum/num_selected"]) == 1.0
  assert 0.0 <= float(metrics["clip/clipped"]) <= 1.0
  # Every client's delta (full participation, one round) by plain local SGD,
  # recomputed one client at a time: the mean pre-clip norm and clipped share.
  @jax.jit
  def client_delta_norm(k):
    result = client_lib.local_update(
        state.trainable, {}, train.examples, train.offsets[k], train.sizes[k],
        round_lib.client_key(state, k), jnp.float32(1.0),
        schedule=spec.schedule, loss_fn=TASK.per_example_loss,
        tx=client_lib.make_client_optimizer("sgd")(0.1))
    return optax.tree.norm(result.delta)

  norms = [float(client_delta_norm(jnp.int32(k))) for k in range(K)]
  np.testing.assert_allclose(float(metrics["clip/norm"]), np.mean(norms), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["clip/clipped"]), np.mean(np.array(norms) > clip))


@pytest.mark.parametrize("kind", aggregation.AGGREGATORS)
def test_aggregators_vmap_over_independent_cohorts(kind):
  """Two cohorts reduced under ``vmap`` give what each gives alone (e.g. a
  simulator running several independent federations as one program)."""
  rng = np.random.default_rng(0)
  deltas = {"a": jnp.asarray(rng.normal(size=(2, COHORT, 5)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(2, COHORT, 2, 3)), jnp.float32)}
  weights = jnp.asarray(rng.uniform(1, 5, size=(2, COHORT)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(2, COHORT)) < 0.8).at[:, 0].set(True)
  agg = AGGREGATORS[kind]
  template = jax.tree.map(lambda x: x[0, 0], deltas)
  keys = jax.random.split(jax.random.key(0), 2)

  def reduce(d, w, m, key):
    state = agg.init(template)
    if isinstance(agg, aggregation.CohortAggregator):
      return agg.aggregate(state, d, w, m, key, template)[0]
    acc = agg.accumulate(agg.start(state, template), d, jnp.where(m, w, 0.0))
    return agg.finalize(state, acc, key)[0]

  batched = jax.jit(jax.vmap(reduce))(deltas, weights, mask, keys)
  for i in range(2):
    alone = reduce(jax.tree.map(lambda x: x[i], deltas), weights[i], mask[i], keys[i])
    # Sums and sorts: a few float32 roundings (rtol 1e-5). The eigenbasis
    # parts: the batched program rounds otherwise (other kernels), see below.
    atol = (_eigenbasis_atol(np.asarray(deltas["b"][i])[np.asarray(mask[i])])
            if kind in ("canonical", "knots") else 1e-6)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], batched), alone,
                                rtol=1e-5, atol=atol)


def _eigenbasis_atol(x):
  """Worst-case float32 change of a result ``U f(Uᵀ X_k)`` when ``U`` are the
  eigenvectors of ``G = Σ_k X_k X_kᵀ`` (valid ``x [n, m, c]``), in float64.

  Rounding moves G by ``||E|| <= (N + m) eps32 tr(G)`` (N-term float32 dots,
  N = n c, plus eigh's backward error), U by ``sqrt(2) ||E|| / gap``
  (Davis-Kahan, gap = the smallest eigengap), and the result by twice that
  times ``max_k ||X_k||`` (U on both sides; the merge f is 1-Lipschitz when
  no TIES trim flips). Observed: 2e-7 (one machine) and 1.65e-6 (another)
  against this bound of ~3e-4; a masking error would be O(1).
  """
  gram = np.einsum("kmc,kpc->mp", x, x)
  evals = np.linalg.eigvalsh(gram)
  error = (x.shape[0] * x.shape[2] + x.shape[1]) * np.finfo(np.float32).eps * np.trace(gram)
  rotation = np.sqrt(2) * error / np.min(np.diff(evals))
  return 2 * rotation * np.max(np.linalg.norm(x.reshape(len(x), -1), axis=1))
