"""Equivalences of the round engine: vmapped = sequential, chunked = unchunked,
padded = unpadded, FedAvg = centralized GD, traced once, state round trips."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import FAST
from fedjax_mm import client as client_lib
from fedjax_mm.data import federated, synthetic
from fedjax_mm.models import logreg
from fedjax_mm.server import fedopt
from fedjax_mm.simulation import population, reference
from fedjax_mm.simulation import round as round_lib

K = 60
TASK = logreg.task(60, 10)


@pytest.fixture(scope="module")
def train():
  data = synthetic.generate(0, K, size_mean=2.0, size_sigma=1.0, min_size=3, max_size=60)
  return jax.device_put(federated.split_by_position(data, 0.9)[0])


def _spec(cohort=20, chunk=0, mode="steps", steps=5, batch=4, epochs=1):
  return round_lib.RoundSpec(num_clients=K, cohort_size=cohort, chunk_size=chunk,
                             schedule=federated.LocalSchedule(mode, steps, batch, epochs))


def _run(build, spec, train, server_tx, rounds=3, client_lr=0.1, weights=None,
         client_opt="sgd"):
  args = (TASK, spec, server_tx, client_lib.make_client_optimizer(client_opt), client_lr)
  fn = build(*args)
  state = round_lib.init_server_state(TASK, server_tx, seed=1)
  pop = round_lib.init_population(TASK, K)
  weights = train.sizes.astype(jnp.float32) if weights is None else weights
  history = []
  for _ in range(rounds):
    state, pop, metrics = fn(state, pop, train, weights, None)
    history.append(metrics)
  return state, pop, history


def _jit_round(*args):
  return jax.jit(round_lib.build_round_fn(*args), **FAST)


def _assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("mode,server", [("steps", "fedadam"), ("epochs", "fedavgm")])
def test_vmapped_round_equals_sequential_loop(train, mode, server):
  spec = _spec(mode=mode, chunk=8)
  tx = (fedopt.fedadam(0.05) if server == "fedadam" else fedopt.fedavgm(0.05, momentum=0.9))
  fast, fast_pop, fast_m = _run(_jit_round, spec, train, tx, client_opt="momentum")
  slow, slow_pop, slow_m = _run(reference.build_sequential_round, spec, train, tx,
                                client_opt="momentum")
  _assert_trees_close(fast.trainable, slow.trainable)
  _assert_trees_close(fast.opt_state, slow.opt_state)
  for f, s in zip(fast_m, slow_m):
    np.testing.assert_allclose(float(f["train_loss"]), s["train_loss"], rtol=1e-6)
    assert int(f["client_steps"]) == s["client_steps"]
  np.testing.assert_array_equal(fast_pop.stats.participations, slow_pop.stats.participations)


def test_chunked_equals_unchunked(train):
  tx = optax.sgd(1.0)
  whole, whole_pop, _ = _run(_jit_round, _spec(chunk=0), train, tx)
  for chunk in (1, 7, 8):  # 7 does not divide 20: the cohort gets padding clients
    part, part_pop, _ = _run(_jit_round, _spec(chunk=chunk), train, tx)
    _assert_trees_close(whole.trainable, part.trainable)
    np.testing.assert_array_equal(whole_pop.stats.participations, part_pop.stats.participations)
    np.testing.assert_array_equal(whole_pop.stats.last_round, part_pop.stats.last_round)


def test_padded_client_equals_unpadded():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 60)), jnp.float32)
  y = jnp.asarray([1, 4, 7], jnp.int32)
  params = {"logreg": {"w": jnp.asarray(rng.normal(size=(60, 10)) * 0.1, jnp.float32),
                       "b": jnp.zeros((10,), jnp.float32)}}
  tx = optax.adam(0.01)  # stateful optimizer: padded steps must not bump its count
  unpadded = client_lib.train_on_batches(
      params, {}, {"x": x[None], "y": y[None]}, jnp.ones((1, 3), bool),
      loss_fn=TASK.per_example_loss, tx=tx)
  # The same 3 examples in the first step of a 10-step x 8-batch plan.
  xp = jnp.zeros((10, 8, 60)).at[0, :3].set(x).at[1:].set(1e3)  # garbage padding
  yp = jnp.zeros((10, 8), jnp.int32).at[0, :3].set(y)
  mask = jnp.zeros((10, 8), bool).at[0, :3].set(True)
  padded = client_lib.train_on_batches(params, {}, {"x": xp, "y": yp}, mask,
                                       loss_fn=TASK.per_example_loss, tx=tx)
  chex.assert_trees_all_equal(unpadded.params, padded.params)
  chex.assert_trees_all_equal(unpadded.opt_state, padded.opt_state)
  assert int(padded.num_steps) == 1
  # And through the real gather: a 3-example client in epochs mode, E=1.
  data = federated.pack({"x": np.asarray(x), "y": np.asarray(y)}, np.zeros(3, int), 1)
  result = client_lib.local_update(
      params, {}, jax.device_put(data.examples), jnp.int32(0), jnp.int32(3),
      jax.random.key(0), jnp.float32(3.0), schedule=federated.LocalSchedule("epochs", 10, 8),
      loss_fn=TASK.per_example_loss, tx=tx)
  # Within a single full batch the order of rows does not change the mean
  # gradient, so the delta equals the unpadded one up to summation order.
  _assert_trees_close(result.delta, jax.tree.map(jnp.subtract, params, unpadded.params))


def test_fedavg_one_full_batch_step_is_centralized_gd(train):
  lr = 0.5
  max_size = int(np.max(train.sizes))
  spec = _spec(cohort=K, mode="epochs", steps=1, batch=max_size)
  state, _, _ = _run(_jit_round, spec, train, optax.sgd(1.0), rounds=3, client_lr=lr)

  def union_loss(params):
    return jnp.mean(TASK.per_example_loss(params, {}, train.examples))

  params = TASK.init_trainable(jax.random.key(0))
  for _ in range(3):
    params = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(union_loss)(params))
  _assert_trees_close(state.trainable, params, rtol=1e-5, atol=1e-6)


def test_round_traced_once_across_cohorts(train):
  spec = _spec(cohort=10, chunk=4)
  tx = fedopt.fedyogi(0.01)
  fn = round_lib.build_round_fn(TASK, spec, tx, client_lib.make_client_optimizer("sgd"),
                                optax.cosine_decay_schedule(0.1, 10))
  jitted = jax.jit(chex.assert_max_traces(fn, n=1), donate_argnums=(0, 1), **FAST)
  state = round_lib.init_server_state(TASK, tx, seed=0)
  pop = round_lib.init_population(TASK, K)
  cohorts = []
  for _ in range(4):
    cohorts.append(np.asarray(round_lib.cohort_ids(state, spec, None)))
    state, pop, _ = jitted(state, pop, train, train.sizes.astype(jnp.float32), None)
  assert len({tuple(sorted(c)) for c in cohorts}) == 4
  assert jitted._cache_size() == 1


def test_population_state_round_trip_across_rounds(train):
  spec = _spec(cohort=15, chunk=4)
  tx = optax.sgd(1.0)
  fn = _jit_round(TASK, spec, tx, client_lib.make_client_optimizer("sgd"), 0.1)
  state = round_lib.init_server_state(TASK, tx, seed=3)
  pop = round_lib.init_population(TASK, K)
  counts, last = np.zeros(K, int), np.full(K, -1)
  for r in range(6):
    ids = np.asarray(round_lib.cohort_ids(state, spec, None))  # independent recomputation
    counts[ids] += 1
    last[ids] = r
    state, pop, _ = fn(state, pop, train, train.sizes.astype(jnp.float32), None)
  np.testing.assert_array_equal(pop.stats.participations, counts)
  np.testing.assert_array_equal(pop.stats.last_round, last)
  assert np.all(np.isnan(pop.stats.last_loss[counts == 0]))
  assert np.all(np.isfinite(pop.stats.last_loss[counts > 0]))
  # Gather/scatter alone: writing gathered rows back is the identity.
  ids = jnp.asarray([5, 2, 9])
  rows = population.gather(pop, ids)
  chex.assert_trees_all_equal(population.scatter(pop, ids, rows, jnp.ones(3, bool)), pop)


def test_nonfinite_client_is_excluded_and_counted(train):
  poisoned_client = 7
  x = np.asarray(train.examples["x"]).copy()
  start = int(train.offsets[poisoned_client])
  x[start:start + int(train.sizes[poisoned_client])] = np.nan
  poisoned = train.replace(examples={"x": jnp.asarray(x), "y": train.examples["y"]})
  spec = _spec(cohort=K, chunk=16)
  tx = optax.sgd(1.0)
  state, pop, metrics = _run(_jit_round, spec, poisoned, tx, rounds=2)
  assert [int(m["num_nonfinite_clients"]) for m in metrics] == [1, 1]
  assert int(pop.stats.nonfinite_updates[poisoned_client]) == 2
  # Same as a run where that client simply has weight 0 (on clean data).
  weights = train.sizes.astype(jnp.float32).at[poisoned_client].set(0.0)
  clean, _, _ = _run(_jit_round, spec, train, tx, rounds=2, weights=weights)
  _assert_trees_close(state.trainable, clean.trainable)


def test_client_learning_rate_schedule_is_indexed_by_round(train):
  schedule = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)
  spec = _spec(cohort=5)
  fn = jax.jit(round_lib.build_round_fn(TASK, spec, optax.sgd(1.0),
                                        client_lib.make_client_optimizer("sgd"), schedule),
               **FAST)
  state = round_lib.init_server_state(TASK, optax.sgd(1.0), seed=0)
  pop = round_lib.init_population(TASK, K)
  for r in range(3):
    before = state.trainable
    state, pop, metrics = fn(state, pop, train, train.sizes.astype(jnp.float32), None)
    np.testing.assert_allclose(float(metrics["client_lr"]), 0.2 * 0.5**r, rtol=1e-6)
  # The last round's update is the one a constant lr of schedule(2) gives.
  const = jax.jit(round_lib.build_round_fn(TASK, spec, optax.sgd(1.0),
                                           client_lib.make_client_optimizer("sgd"), 0.05),
                  **FAST)
  replay, _, _ = const(state.replace(round=state.round - 1, trainable=before), pop, train,
                       train.sizes.astype(jnp.float32), None)
  _assert_trees_close(replay.trainable, state.trainable)


def test_uniform_weighting_is_unweighted_mean_of_client_deltas(train):
  spec = _spec(cohort=K, mode="epochs", steps=1, batch=int(np.max(train.sizes)))
  state, _, _ = _run(_jit_round, spec, train, optax.sgd(1.0), rounds=1, client_lr=0.5,
                     weights=jnp.ones((K,), jnp.float32))
  params0 = TASK.init_trainable(jax.random.key(0))

  owners = np.repeat(np.arange(K), np.asarray(train.sizes))

  @jax.jit
  def client_grad(params, in_client):
    # Client k's mean loss over its own rows: one compilation for all k.
    def loss(p):
      per_example = TASK.per_example_loss(p, {}, train.examples)
      return jnp.sum(jnp.where(in_client, per_example, 0.0)) / jnp.sum(in_client)
    return jax.grad(loss)(params)

  grads = [jax.device_get(client_grad(params0, jnp.asarray(owners == k))) for k in range(K)]
  expected = jax.tree.map(lambda p, *g: p - 0.5 * np.mean(np.stack(g), 0), params0, *grads)
  _assert_trees_close(state.trainable, expected, rtol=1e-5, atol=1e-6)


def test_centralized_training_equals_hand_written_sgd(train):
  from fedjax_mm import centralized
  lr, steps, batch = 0.3, 7, 16
  params = centralized.train(TASK, train, num_steps=steps, batch_size=batch,
                             optimizer=optax.sgd(lr), seed=4)
  # The same epoch-permutation order, replayed by hand.
  n = train.num_examples
  order = np.random.default_rng(4).permutation(n)
  expected = TASK.init_trainable(jax.random.key(0))
  for s in range(steps):
    rows = order[s * batch:(s + 1) * batch]
    batch_data = jax.tree.map(lambda a: a[rows], train.examples)
    grads = jax.grad(lambda p: jnp.mean(TASK.per_example_loss(p, {}, batch_data)))(expected)
    expected = jax.tree.map(lambda p, g: p - lr * g, expected, grads)
  _assert_trees_close(params, expected, rtol=1e-5, atol=1e-6)
