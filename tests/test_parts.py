"""The contract every registered part passes inside a round.

The cases are read off the registries, so a newly registered part is
contract-tested without editing this file: every client algorithm (with the
streaming mean), every aggregator (with SCAFFOLD, the part with the most
state), every preprocessor (in front of a whole-cohort reduction) and every
server optimizer (OPM with the canonical aggregator whose basis it moves).
``VARIANTS`` adds configurations of a part that take another code path
(CRA's streamed computation). Each case: the round jits and is traced once,
same seed gives the same bits, state survives an orbax checkpoint and the
resumed round continues bit for bit, and padding clients are ignored
(chunked = unchunked with padding). Plus: NaN/Inf clients never reach the
aggregate or the state, whole-cohort aggregators vmap over independent
cohorts, the stack cap, and the merging of part metrics.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import COHORT, EPOCHS, FAST, K, TASK, bits, build
from fedjax_mm import aggregation
from fedjax_mm import checkpoint as checkpoint_lib
from fedjax_mm import client as client_lib
from fedjax_mm.aggregation import AGGREGATORS, PREPROCESSORS, WRAPPERS
from fedjax_mm.algorithms import ALGORITHMS
from fedjax_mm.data import federated
from fedjax_mm.server import SERVER
from fedjax_mm.simulation import round as round_lib

TEMPLATE = jax.eval_shape(TASK.init_trainable, jax.random.key(0))
# The run context every part may ask for (see Part.context).
CONTEXT = dict(client_optimizer="sgd", client_momentum=0.0, cohort_size=COHORT,
               template=TEMPLATE, max_stack_bytes=2**40, learning_rate=1.0,
               aggregator_kind="canonical", aggregator_rank=None,
               inner=aggregation.weighted_mean())
# Configurations of a registered part that take another code path.
VARIANTS = {"canonical-streamed": ("canonical", dict(path="streamed", score_with="previous"))}


def made(registry, name, **options):
  """Part ``name`` with its defaults (and ``options``) and the context it declares."""
  context = {c: CONTEXT[c] for c in registry[name].context}
  return registry.make(name, **context, **options)


def _aggregator(name):
  if name in WRAPPERS:      # around the mean (CONTEXT["inner"])
    return made(WRAPPERS, name)
  if name in VARIANTS:
    base, options = VARIANTS[name]
    return made(AGGREGATORS, base, **options)
  return made(AGGREGATORS, name)


def parts_of(case):
  """``(kind, name)`` -> round parts: the named part plus the defaults around it."""
  kind, name = case
  if kind == "algorithm":
    return dict(algorithm=made(ALGORITHMS, name))
  if kind == "aggregator":
    return dict(algorithm=made(ALGORITHMS, "scaffold"), aggregator=_aggregator(name))
  if kind == "preprocessor":
    return dict(preprocessors=(made(PREPROCESSORS, name),),
                aggregator=made(AGGREGATORS, "trimmed_mean", trim_fraction=0.2))
  parts = dict(tx=made(SERVER, name))
  if "aggregator_kind" in SERVER[name].context:   # moves that aggregator's state
    parts["aggregator"] = made(AGGREGATORS, CONTEXT["aggregator_kind"])
  return parts


CASES = ([("algorithm", n) for n in ALGORITHMS.names]
         + [("aggregator", n) for n in AGGREGATORS.names if n != "mean"]
         + [("aggregator", n) for n in VARIANTS]
         + [("aggregator", n) for n in WRAPPERS.names]
         + [("preprocessor", n) for n in PREPROCESSORS.names]
         + [("server", n) for n in SERVER.names if n != "fedavg"])
IDS = [f"{kind}-{name}" for kind, name in CASES]

# Chunked vs unchunked: the chunk size changes the vmapped client batch and the
# summation order of the cohort's sums, so float32 results differ by roundings:
# ~n eps per sum of n <= 24 terms (1.4e-6 relative), compounded over 3 rounds of
# training whose steps are 1-Lipschitz here (lr 0.1 on a convex loss): rtol 2e-5.
DEFAULT_TOL = dict(rtol=2e-5, atol=1e-6)
TOLERANCES = {
    # The geometric median stops within tolerance * s * rho / (1 - rho) <= 1e-5 s
    # of the exact one (rho <= 1/2, s the median distance, <= 2 max ||delta|| =
    # 3.4 here): if a different stack size (9 padded rows vs 7) changed its last
    # iteration, each round's aggregate would move by <= 2 * 3.4e-5, 3 rounds
    # <= 2e-4 (SCAFFOLD's controls, ~10x the deltas, by the same share: rtol).
    "geometric_median": dict(rtol=2e-3, atol=2e-4),
    # KnOTS trims coordinates in the eigenbasis of the cohort's Gram matrix:
    # rounding-level changes of the deltas turn nearly degenerate eigenvectors
    # (Davis-Kahan: rotation <= sqrt(2) |E| / gap), and the trim is not
    # rotation-invariant, so entries near zero move by a few 1e-6.
    "knots": dict(rtol=2e-5, atol=2e-5),
    # RegMean solves (Σ G̃) Δ* = Σ G̃ Δ: the summation order perturbs both sums
    # by <= 7 eps relative (7 clients), which the solve amplifies by the
    # (Jacobi-scaled) condition number of Σ G̃, ~3e2 here (89 rows, 60
    # features, α = 0.9): <= 2.5e-4 relative per round on kernels <= 0.3,
    # and the next rounds' train loss moves with the kernels (rtol 1e-4).
    "regmean": dict(rtol=1e-4, atol=2e-4),
}


def _tolerance(case):
  return TOLERANCES.get(case[1], DEFAULT_TOL)


def _build(case, chunk=0, jit=True):
  parts = parts_of(case)
  tx = parts.pop("tx", optax.sgd(1.0))
  return build(chunk=chunk, tx=tx, jit=jit, **parts)


def test_every_registered_part_is_a_case():
  covered = {(k, n) for k, n in CASES}
  assert {("algorithm", n) for n in ALGORITHMS.names} <= covered
  assert {("aggregator", n) for n in AGGREGATORS.names} - {("aggregator", "mean")} <= covered
  assert {("aggregator", n) for n in WRAPPERS.names} <= covered
  assert {("preprocessor", n) for n in PREPROCESSORS.names} <= covered
  assert {("server", n) for n in SERVER.names} - {("server", "fedavg")} <= covered


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_traced_once_deterministic_resumable_and_padding_free(train, case, tmp_path):
  chex.clear_trace_counter()
  h = _build(case, jit=False)
  h.fn = jax.jit(chex.assert_max_traces(h.fn, n=1), **FAST)
  # Committed to the device, as an orbax restore commits: the resumed round
  # then runs the same executable (uncommitted inputs would compile another).
  h.state, h.pop = jax.device_put((h.state, h.pop), jax.devices()[0])
  a = h.run(train, 3)
  b = h.run(train, 3)
  assert h.fn._cache_size() == 1
  for x, y in zip(bits(a[:2]), bits(b[:2])):   # same seed, same bits
    np.testing.assert_array_equal(x, y)
  # Server and population state through an orbax checkpoint: same bits, and
  # the next round from the restored state is the next round.
  run_state = {"server": a[0], "population": a[1]}
  with checkpoint_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, run_state, {"history": []}, force=True)
    restored, _ = ckpt.restore(None, checkpoint_lib.abstract_like(run_state))
  for x, y in zip(bits(run_state), bits(restored)):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(bits(h.run(train, 1, a[0], a[1])[:2]),
                  bits(h.run(train, 1, restored["server"], restored["population"])[:2])):
    np.testing.assert_array_equal(x, y)
  assert h.fn._cache_size() == 1
  # Chunks of 3 pad the cohort of 7 with 2 weight-0 clients (id 0 repeated):
  # nothing of theirs may reach the aggregate, the metrics or the population.
  c = _build(case, chunk=3).run(train, 3)
  tol = _tolerance(case)
  chex.assert_trees_all_close(a[0].trainable, c[0].trainable, **tol)
  chex.assert_trees_all_close(a[0].algorithm, c[0].algorithm, **tol)
  chex.assert_trees_all_close(a[1], c[1], **tol)
  for m, n in zip(a[2], c[2]):
    assert m.keys() == n.keys()
    np.testing.assert_allclose(float(m["train_loss"]), float(n["train_loss"]),
                               rtol=max(tol["rtol"], 1e-5))
    assert int(m["num_counted_clients"]) == int(n["num_counted_clients"]) == COHORT
  assert float(optax.tree.norm(a[0].trainable)) > 0  # it trained


@pytest.mark.parametrize("name", ALGORITHMS.names)
def test_nonfinite_client_never_reaches_the_aggregate_or_the_state(train, name):
  _check_nonfinite_excluded(train, made(ALGORITHMS, name), aggregation.weighted_mean(),
                            (made(PREPROCESSORS, "top_k"),))


def test_nonfinite_client_is_excluded_before_a_whole_cohort_aggregator(train):
  _check_nonfinite_excluded(train, made(ALGORITHMS, "scaffold"),
                            AGGREGATORS.make("krum", cohort_size=K, num_byzantine=2), ())


def _check_nonfinite_excluded(train, algorithm, aggregator, preprocessors):
  poisoned = 5
  x = np.asarray(train.examples["x"]).copy()
  start = int(train.offsets[poisoned])
  x[start:start + int(train.sizes[poisoned])] = np.inf
  bad = train.replace(examples={"x": jnp.asarray(x), "y": train.examples["y"]})
  h = build(cohort=K, chunk=8, algorithm=algorithm, aggregator=aggregator,
            preprocessors=preprocessors)
  state, pop, metrics = h.run(bad, 1)
  metrics = metrics[0]
  assert int(metrics["num_nonfinite_clients"]) == 1
  assert int(metrics["num_counted_clients"]) == K - 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(
      (state.trainable, state.opt_state, state.algorithm, pop.client, pop.preprocess)))
  # The excluded client's own state did not move; another client's did.
  for per_client in (pop.client, pop.preprocess):
    if jax.tree.leaves(per_client):
      assert float(optax.tree.norm(jax.tree.map(lambda c: c[poisoned], per_client))) == 0.0
      assert float(optax.tree.norm(jax.tree.map(lambda c: c[6], per_client))) > 0.0


def test_whole_cohort_stack_over_the_cap_is_refused_naming_the_numbers():
  spec = round_lib.RoundSpec(num_clients=K, cohort_size=20, chunk_size=0,
                             schedule=federated.LocalSchedule("steps", 2, 4))
  build_fn = lambda cap: round_lib.build_round_fn(
      TASK, spec, optax.sgd(1.0), client_lib.make_client_optimizer("sgd"), 0.1,
      aggregator=made(AGGREGATORS, "median"), max_stack_bytes=cap)
  # logreg 60 -> 10: 610 float32 parameters; 20 clients -> 48,800 bytes.
  assert aggregation.base.stack_bytes(TASK.init_trainable(jax.random.key(0)), 20) == 48_800
  build_fn(48_800)
  with pytest.raises(ValueError, match=r"'median' stacks the whole cohort: 20 clients x "
                                       r"610 parameters = 0\.0 MiB > the cap"):
    build_fn(48_799)
  # A streaming aggregator never stacks: no cap applies.
  round_lib.build_round_fn(TASK, spec, optax.sgd(1.0), client_lib.make_client_optimizer("sgd"),
                           0.1, max_stack_bytes=1)


def test_a_stateful_preprocessor_needs_its_population_state(train):
  h = build(preprocessors=(made(PREPROCESSORS, "top_k"),))
  bare = round_lib.init_population(TASK, K)
  with pytest.raises(ValueError, match=r"preprocessors \['top_k'\] keep per-client state"):
    h.fn(h.state, bare, train, train.sizes.astype(jnp.float32), None)


def test_part_metrics_are_prefixed_and_averaged_over_counted_clients(train):
  clip = 0.05
  scaffold = made(ALGORITHMS, "scaffold")
  h = build(cohort=K, chunk=5, algorithm=scaffold, aggregator=made(AGGREGATORS, "krum"),
            preprocessors=(aggregation.l2_clip(clip),))
  _, _, (metrics,) = h.run(train, 1)
  assert {"scaffold/client_control_norm", "scaffold/control_norm", "clip/clipped",
          "clip/norm", "krum/num_selected"} <= set(metrics)
  assert float(metrics["krum/num_selected"]) == 1.0
  assert 0.0 <= float(metrics["clip/clipped"]) <= 1.0
  # Every client's delta (full participation, one round) by plain local SGD,
  # recomputed one client at a time: the mean pre-clip norm and clipped share.
  state = h.state

  @jax.jit
  def client_delta_norm(k):
    result = client_lib.local_update(
        state.trainable, {}, train.examples, train.offsets[k], train.sizes[k],
        round_lib.client_key(state, k), jnp.float32(1.0),
        schedule=EPOCHS, loss_fn=TASK.per_example_loss,
        tx=client_lib.make_client_optimizer("sgd")(0.1))
    return optax.tree.norm(result.delta)

  norms = [float(client_delta_norm(jnp.int32(k))) for k in range(K)]
  # Sums of 24 float32 norms: a few roundings (rtol 1e-5).
  np.testing.assert_allclose(float(metrics["clip/norm"]), np.mean(norms), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["clip/clipped"]), np.mean(np.array(norms) > clip))


VMAP_CASES = [n for n in AGGREGATORS.names] + list(VARIANTS) + list(WRAPPERS.names)


SUMMED = [n for n in VMAP_CASES if getattr(_aggregator(n), "summand", None) is not None]


@pytest.mark.parametrize("name", SUMMED)
def test_sum_decomposable_aggregators_accumulate_their_summands(name):
  """``summand`` set means: ``start`` gives zeros of its structure and
  ``accumulate`` adds each client's term (what secure_sum and central noise
  rely on). Checked against the terms summed one client at a time in NumPy."""
  agg = _aggregator(name)
  rng = np.random.default_rng(1)
  deltas = {"a": jnp.asarray(rng.normal(size=(COHORT, 5)), jnp.float32)}
  weights = jnp.asarray(rng.uniform(1, 5, size=COHORT), jnp.float32).at[2].set(0.0)
  template = jax.tree.map(lambda x: x[0], deltas)
  acc0 = agg.start(agg.init(template), template, jax.random.key(0))
  for leaf in jax.tree.leaves(acc0):
    np.testing.assert_array_equal(np.asarray(leaf), 0)
  acc = agg.accumulate(acc0, deltas, weights)
  terms = [jax.tree.leaves(agg.summand(jax.tree.map(lambda x: x[k], deltas), weights[k]))
           for k in range(COHORT)]
  expected = [np.sum([np.asarray(t[i], np.float64) for t in terms], axis=0)
              for i in range(len(terms[0]))]
  # Sums of 7 float32 terms of size <= 5 * 4: rounding <= 7 eps * 20 ~ 2e-5.
  for got, want in zip(jax.tree.leaves(acc), expected):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", VMAP_CASES)
def test_aggregators_vmap_over_independent_cohorts(name):
  """Two cohorts reduced under ``vmap`` give what each gives alone (e.g. a
  simulator running several independent federations as one program)."""
  rng = np.random.default_rng(0)
  deltas = {"a": jnp.asarray(rng.normal(size=(2, COHORT, 5)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(2, COHORT, 2, 3)), jnp.float32)}
  weights = jnp.asarray(rng.uniform(1, 5, size=(2, COHORT)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(2, COHORT)) < 0.8).at[:, 0].set(True)
  template = jax.tree.map(lambda x: x[0, 0], deltas)
  agg = _aggregator(name)
  keys = jax.random.split(jax.random.key(0), 2)

  def reduce(d, w, m, key):
    state = agg.init(template)
    if isinstance(agg, aggregation.CohortAggregator):
      return agg.aggregate(state, d, w, m, key, template)[0]
    acc = agg.accumulate(agg.start(state, template, key), d, jnp.where(m, w, 0.0))
    return agg.finalize(state, acc, key)[0]

  batched = jax.jit(jax.vmap(reduce), **FAST)(deltas, weights, mask, keys)
  # Jitted too (run eagerly, every op compiles on its own: 28 s for secure_sum).
  reduce_one = jax.jit(reduce, **FAST)
  for i in range(2):
    alone = reduce_one(jax.tree.map(lambda x: x[i], deltas), weights[i], mask[i], keys[i])
    # Sums and sorts: a few float32 roundings (rtol 1e-5). The eigenbasis
    # parts: the batched program rounds otherwise (other kernels), see below.
    atol = (_eigenbasis_atol(np.asarray(deltas["b"][i])[np.asarray(mask[i])])
            if name in ("canonical", "knots", "canonical-streamed") else 1e-6)
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
