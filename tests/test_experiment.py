"""The experiments' library (fedjax_mm.experiment): overrides, labels, the method
table, the floor and centralized references, and the one initial-parameters key."""

from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_mm import centralized, config_files, configuration, evaluation, registry
from fedjax_mm.aggregation import AGGREGATORS, PREPROCESSORS
from fedjax_mm.algorithms import ALGORITHMS
from fedjax_mm.data import federated
from fedjax_mm.experiment import labels, methods, overrides, references
from fedjax_mm.models import logreg
from fedjax_mm.server import SERVER
from fedjax_mm.simulation import round as round_lib, validation
from fedjax_mm.types import initial_trainable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
  return config_files.load(ROOT / "configs/fedma_demo.py", "dirichlet")


# ------------------------------------------------------------------ overrides

def test_overrides_parse_by_the_fields_type_and_leave_the_input_alone(demo):
  got = overrides.apply(demo, ["server.learning_rate=1", "server.opm.procrustes=false",
                               "server.fedadam.b1=0.5", "num_rounds=3", "algorithm.kind=fedprox",
                               "algorithm.fedprox.mu=0.1", "num_rounds=4"])
  assert got.server.learning_rate == 1.0 and isinstance(got.server.learning_rate, float)
  assert got.server.opm.procrustes is False          # "false" -> a bool, not a string
  assert got.server.fedadam.b1 == 0.5                # a float placeholder (default None)
  assert got.num_rounds == 4 and isinstance(got.num_rounds, int)   # the later one wins
  assert (got.algorithm.kind, got.algorithm.fedprox.mu) == ("fedprox", 0.1)
  assert (demo.num_rounds, demo.algorithm.kind, demo.server.fedadam.b1) == (30, "fedavg", None)
  assert overrides.apply(demo, []).to_dict() == demo.to_dict()


@pytest.mark.parametrize("item, message", [
    ("nosuch=1", "config.nosuch: no such field (--help lists the fields)"),
    ("server.learnin_rate=1",
     "config.server.learnin_rate: no such field; did you mean config.server.learning_rate?"),
    ("server.learning_rate=abc", "config.server.learning_rate: must be a number, got 'abc'"),
    ("num_rounds=2.5", "config.num_rounds: must be an integer, got '2.5'"),
    ("server.opm.procrustes=maybe", "config.server.opm.procrustes: must be true or false, "
                                    "got 'maybe'"),
    ("server.learning_rate", "--override: must be key=value (e.g. server.learning_rate=0.1), "
                             "got 'server.learning_rate'"),
])
def test_bad_overrides_are_one_line(demo, item, message):
  with pytest.raises(overrides.OverrideError) as e:
    overrides.apply(demo, [item])
  assert str(e.value) == message


@pytest.mark.parametrize("old", sorted(configuration.MOVED))
def test_moved_fields_name_their_new_place(demo, old):
  with pytest.raises(overrides.OverrideError) as e:
    overrides.apply(demo, [f"{old}=1"])
  assert str(e.value) == f"config.{old}: moved to config.{configuration.MOVED[old]}"
  with pytest.raises(overrides.OverrideError, match="moved to"):
    overrides.apply_values(demo, {old: 1})


def test_typed_values_go_through_the_configs_type_checks(demo):
  got = overrides.apply_values(demo, {"server.learning_rate": 1, "server.fedadam.b1": 0.9})
  assert got.server.learning_rate == 1.0 and isinstance(got.server.learning_rate, float)
  assert got.server.fedadam.b1 == 0.9 and demo.server.fedadam.b1 is None
  for values, message in (
      ({"server.learning_rate": "x"}, "config.server.learning_rate: must be a number, got 'x'"),
      ({"num_rounds": 2.5}, "config.num_rounds: must be an integer, got 2.5"),
      ({"server.nosuch": 1}, "config.server.nosuch: no such field"),
  ):
    with pytest.raises(overrides.OverrideError, match="^" + message.replace(".", r"\.")):
      overrides.apply_values(demo, values)
  with pytest.raises(overrides.OverrideError):   # nothing is set before every field checks out
    overrides.apply_values(demo, {"num_rounds": 7, "nosuch": 1})
  assert demo.num_rounds == 30


# ------------------------------------------------------------------ labels

def _with(config, **values):
  return overrides.apply_values(config, {k.replace("__", "."): v for k, v in values.items()})


def test_labels_say_what_ran(demo):
  assert labels.method_label(demo) == "FedAvg"
  assert labels.method_label(_with(demo, server__kind="fedadam")) == "FedAdam"
  assert labels.method_label(_with(demo, server__kind="fedadam", algorithm__kind="scaffold")) \
      == "SCAFFOLD + FedAdam server"
  assert labels.method_label(_with(demo, algorithm__kind="fednova", client__optimizer="sgd",
                                   aggregation__kind="median")) == "FedNova (SGD clients), median"
  # FedProx always shows mu; another algorithm only when an option left its default.
  assert labels.method_label(_with(demo, algorithm__kind="fedprox")) == "FedProx (mu=0.01)"
  assert labels.method_label(_with(demo, algorithm__kind="fedprox", algorithm__fedprox__mu=0.1,
                                   aggregation__kind="krum")) == "FedProx (mu=0.1), Krum"
  assert labels.method_label(_with(demo, algorithm__kind="feddyn")) == "FedDyn"
  assert labels.method_label(_with(demo, algorithm__kind="feddyn",
                                   algorithm__feddyn__alpha=0.1)) == "FedDyn (alpha=0.1)"
  assert labels.method_label(_with(demo, client__optimizer="momentum",
                                   preprocess__chain="l2_clip",
                                   preprocess__l2_clip__max_norm=0.5)) \
      == "FedAvg (momentum clients), L2 clip 0.5"
  assert labels.data_label(demo, "dirichlet") == "Dirichlet(0.1)"
  assert labels.data_label(demo, "iid") == "IID" and labels.data_label(demo, "domain") == "domain"


@pytest.mark.parametrize("name", ALGORITHMS.names)
def test_every_algorithm_is_labelled_by_its_part(demo, name):
  assert labels.method_label(_with(demo, algorithm__kind=name)).startswith(ALGORITHMS[name].label)


@pytest.mark.parametrize("name", SERVER.names)
def test_every_server_optimizer_is_labelled_by_its_part(demo, name):
  label = labels.method_label(_with(demo, server__kind=name))
  assert label == SERVER[name].label     # FedAvg clients: the server's name is the method


@pytest.mark.parametrize("name", AGGREGATORS.names)
def test_every_aggregator_is_labelled_by_its_part(demo, name):
  label = labels.method_label(_with(demo, aggregation__kind=name))
  assert label == ("FedAvg" if name == "mean" else f"FedAvg, {AGGREGATORS[name].label}")


@pytest.mark.parametrize("name", PREPROCESSORS.names)
def test_every_preprocessor_is_labelled_by_its_part(demo, name):
  label = labels.method_label(_with(demo, preprocess__chain=name))
  assert label.startswith(f"FedAvg, {PREPROCESSORS[name].label}")


def test_a_newly_registered_part_is_labelled_without_an_edit(demo, monkeypatch):
  def foo(width: int = 3, mode: str = "fast"):
    return None
  parts = [*AGGREGATORS, registry.Part("foo", foo, "Foo-Agg", "a test part")]
  monkeypatch.setattr(labels, "AGGREGATORS", registry.Registry("aggregator", parts))
  config = demo.copy_and_resolve_references()
  config.aggregation.kind = "foo"
  assert labels.method_label(config) == "FedAvg, Foo-Agg"


# ------------------------------------------------------------------ the method table

@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_validates_on_the_demo_config_at_its_grids_corners(demo, name):
  method = methods.METHODS[name]
  centers = {path: method.default(demo, path) for path in method.axes}
  for scale in (1 / 27, 27.0):    # the widened grid's ends: 3 ** (1 + 2)
    values = {path: c * scale for path, c in centers.items()}
    validation.validate(overrides.apply_values(demo, {**method.overrides, **values}))


def test_the_tuned_rate_is_the_methods_own_else_the_configs(demo):
  assert methods.METHODS["fedadam"].default(demo, "server.learning_rate") == 0.01   # override
  assert methods.METHODS["fedavg"].default(demo, "client.learning_rate") \
      == demo.client.learning_rate
  assert methods.METHODS["ties"].default(demo, "aggregation.ties.scale") \
      == demo.aggregation.ties.scale == 1.0
  # Every method is tuned on the clients' rate and its own step knob (2-D).
  assert all(len(m.axes) == 2 and m.axes[0] == "client.learning_rate"
             for m in methods.METHODS.values())
  assert set(methods.COMPARED) | set(methods.ABLATIONS) <= set(methods.METHODS)
  assert not set(methods.COMPARED) & set(methods.ABLATIONS)


# ------------------------------------------------------------------ references

def _keyed_task():
  # Logistic regression whose init depends on the key (logreg's own is zeros),
  # so a wrong key changes the floor.
  base = logreg.task(2, 3)
  init = lambda key: {"logreg": {"w": jax.random.normal(key, (2, 3)), "b": jnp.zeros(3)}}
  return base._replace(init_trainable=init)


def _data(n: int, clients: int, seed: int):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 2)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
  return federated.pack({"x": x, "y": y}, np.arange(n) % clients, clients)


def test_initial_trainable_is_the_rounds_init_and_one_fixed_key():
  task = _keyed_task()
  # The derivation written out: the parameters' key is fold_in(key(seed), 2**31 - 1).
  expected = task.init_trainable(jax.random.fold_in(jax.random.key(7), 2**31 - 1))
  got = initial_trainable(task, 7)
  state = round_lib.init_server_state(task, optax.sgd(1.0), 7)
  for a, b, c in zip(jax.tree.leaves(expected), jax.tree.leaves(got),
                     jax.tree.leaves(state.trainable)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_the_floor_is_the_untrained_models_evaluation_exactly():
  task, test = _keyed_task(), _data(12, 3, 1)
  evaluate = references.evaluator(task, test, batch_size=5)
  floor = references.floor(task, 3, evaluate)
  init = task.init_trainable(jax.random.fold_in(jax.random.key(3), 2**31 - 1))
  eval_fn = jax.jit(evaluation.build_eval_fn(task, test, 5))
  expected = evaluation.summarize(jax.device_get(eval_fn(init, test)))
  assert floor.steps == 0 and floor.summary == expected     # the same program and inputs
  np.testing.assert_array_equal(floor.trainable["logreg"]["w"], init["logreg"]["w"])
  other = references.floor(task, 4, evaluate)                 # another seed, another floor
  assert not np.array_equal(other.trainable["logreg"]["w"], init["logreg"]["w"])


def _budget_config(demo, **local):
  return _with(demo, num_rounds=3, clients_per_round=4, local__num_steps=5,
               local__batch_size=2, **{f"local__{k}": v for k, v in local.items()})


def test_the_example_budget_by_hand(demo):
  config = _budget_config(demo)
  big = SimpleNamespace(sizes=np.array([5, 9, 30]))      # every client holds >= a batch
  assert references.example_budget(config, big) == 3 * 4 * 5 * 2 == 120
  assert references.budget_steps(config, big, 7) == 17        # 120 // 7
  assert references.budget_steps(config, big, 64) == 1        # 120 // 64
  assert references.budget_steps(config, big, 200) == 1       # under one batch: still one step
  # A client of 1 row fills one slot a step (steps mode): 5, 10, 10 -> mean 25/3.
  small = SimpleNamespace(sizes=np.array([1, 9, 30]))
  assert references.example_budget(config, small) == round(3 * 4 * 25 / 3) == 100
  # Epochs mode, 1 epoch, batches of 2, 5 steps: clients of 3, 10 and 1 rows
  # compute 3, 10 (5 steps x 2 = the whole pass) and 1 -> mean 14/3, not the
  # cap's 5 x 2 = 10; x 3 rounds x 4 clients = 56.
  epochs = _budget_config(demo, mode="epochs", num_epochs=1)
  tiny = SimpleNamespace(sizes=np.array([3, 10, 1]))
  assert references.example_budget(epochs, tiny) == 56
  # 2 epochs: 6, 10 (capped: 5 steps of 2) and 2 -> 18/3 = 6 a client.
  assert references.example_budget(_budget_config(demo, mode="epochs", num_epochs=2),
                                   tiny) == 72
  assert references.sequential_steps(config, None) == 15   # steps mode: 3 rounds x 5
  # Epochs mode: 2 epochs of batches of 2 over clients of 3, 10 and 1 rows need
  # 4, 10 (capped at 5) and 2 steps; their mean 11/3 rounds to 4; x 3 rounds.
  two = _budget_config(demo, mode="epochs", num_epochs=2)
  assert references.sequential_steps(two, SimpleNamespace(sizes=np.array([3, 10, 1]))) == 12
  # Size sampling weights by rows: (3*3 + 10*10 + 1*1) / 14 a client.
  sized = _with(epochs, sampling="size")
  assert references.example_budget(sized, tiny) == round(12 * 110 / 14)


@pytest.mark.parametrize("mode,epochs", [("steps", 1), ("epochs", 1), ("epochs", 3)])
def test_example_gradients_are_the_local_plans_filled_slots(mode, epochs):
  # The budget's closed form against the engine's own plan (what clients compute).
  schedule = federated.LocalSchedule(mode, 6, 4, epochs)
  sizes = np.array([0, 1, 3, 4, 5, 9, 17, 40])
  plans = [federated.client_plan(jnp.int32(n), jax.random.key(0), schedule)[1] for n in sizes]
  np.testing.assert_array_equal(references.example_gradients(sizes, schedule),
                                [int(np.sum(mask)) for mask in plans])


def test_the_centralized_reference_trains_from_the_floor_on_the_budget(demo):
  task, train, test = _keyed_task(), _data(24, 4, 2), _data(9, 3, 5)
  config = _with(_budget_config(demo), seed=3, client__learning_rate=0.1)
  evaluate = references.evaluator(task, test, batch_size=9)
  ref = references.centralized(config, task, train, evaluate, batch_size=7)
  assert ref.steps == 17
  init = task.init_trainable(jax.random.fold_in(jax.random.key(3), 2**31 - 1))
  expected = centralized.train(task, train, num_steps=17, batch_size=7,
                               optimizer=optax.adam(0.1), seed=3, trainable=init)
  for a, b in zip(jax.tree.leaves(ref.trainable), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)      # same start, optimizer, steps and data order
  assert ref.summary == evaluate(expected)
  assert not np.array_equal(ref.trainable["logreg"]["w"], init["logreg"]["w"])


def test_the_centralized_reference_takes_a_given_step_count(demo, monkeypatch):
  calls = []
  monkeypatch.setattr(references.centralized_lib, "train",
                      lambda task, data, **kw: calls.append(kw) or kw["trainable"])
  config = _budget_config(demo)
  ref = references.centralized(config, _keyed_task(), None, lambda p: {"n": 1}, batch_size=7,
                               num_steps=2)
  assert ref.steps == 2 and ref.summary == {"n": 1}
  assert (calls[0]["num_steps"], calls[0]["batch_size"], calls[0]["seed"]) == (2, 7, 0)
