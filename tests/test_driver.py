"""The driver's guards: diverged runs stop, weights count trainable rows, the
epochs step cap is reported and measured, a resume may not change the run,
and the demo labels rows by what ran."""

import importlib.util
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm import config_files, configuration, evaluation, setups
from fedjax_mm.data import federated
from fedjax_mm.simulation import builders, driver, run_config
from fedjax_mm.types import Task

ROOT = Path(__file__).parents[1]


def _small_config(**overrides):
  config = config_files.load(ROOT / "configs/synthetic.py")
  config.num_rounds = 4
  config.eval_every = 0
  config.checkpoint.every = 2
  config.checkpoint.async_save = False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_a_round_whose_clients_all_diverge_stops_the_run(tmp_path):
  # lr 1e38 overflows every client's local SGD to NaN/Inf in its first steps:
  # all are excluded, the server cannot move, and the run must say so.
  config = _small_config(**{"client.learning_rate": 1e38})
  with pytest.raises(driver.NonFiniteError,
                     match=r"round 1: all 10 clients sent NaN/Inf updates .*lower "
                           r"client\.learning_rate \(now 1e\+38\)"):
    driver.train_and_evaluate(config, str(tmp_path), progress=False)


def test_check_round_passes_partial_exclusion_and_trips_on_total():
  config = _small_config()
  driver.check_round({"round": 3, "num_nonfinite_clients": 9, "train_loss": 0.5}, config)
  with pytest.raises(driver.NonFiniteError, match="all 10 clients"):
    driver.check_round({"round": 3, "num_nonfinite_clients": 10, "train_loss": 0.0}, config)
  with pytest.raises(driver.NonFiniteError, match="training loss is nan"):
    driver.check_round({"round": 3, "num_nonfinite_clients": 0, "train_loss": float("nan")},
                       config)


def test_example_weights_count_only_rows_that_can_train():
  # Client 0: 3 rows, 1 captioned; client 1: 2 rows, both; client 2: none.
  data = federated.pack({"has_caption": np.array([1, 0, 0, 1, 1], bool)},
                        np.array([0, 0, 0, 1, 1]), 3)
  task = Task(init_trainable=None, frozen={}, per_example_loss=None, per_example_metrics=None,
              example_mask=lambda batch: batch["has_caption"])
  config = _small_config()
  np.testing.assert_array_equal(builders.aggregation_weights(config, data, task), [1, 2, 0])
  np.testing.assert_array_equal(
      builders.aggregation_weights(config, data, task._replace(example_mask=None)), [3, 2, 0])
  config.aggregation.weighting = "uniform"
  np.testing.assert_array_equal(builders.aggregation_weights(config, data, task), [1, 1, 1])


@pytest.mark.parametrize("schedule", [
    federated.LocalSchedule("epochs", 3, 4, 1),   # a 20-row client is cut to 12 rows
    federated.LocalSchedule("epochs", 7, 4, 2),   # passes 2 cut, pass 1 complete
    federated.LocalSchedule("steps", 2, 4),
    federated.LocalSchedule("steps", 9, 5),
])
def test_rows_covered_equals_the_distinct_rows_of_the_plan(schedule):
  for size in (0, 1, 3, 4, 5, 12, 20):
    positions, mask = federated.client_plan(jnp.int32(size), jax.random.key(size), schedule)
    distinct = len(set(np.asarray(positions)[np.asarray(mask)].tolist()))
    assert int(federated.rows_covered(jnp.int32(size), schedule)) == distinct, size


def test_truncation_report_and_rows_used_metric(tmp_path):
  sizes = np.array([4, 8, 20, 40])   # with B=4, S=3: the 20 and 40 row clients are cut
  data = federated.pack({"x": np.zeros((72, 1))}, np.repeat(np.arange(4), sizes), 4)
  report = builders.truncation_report(federated.LocalSchedule("epochs", 3, 4, 1), data)
  assert report == {"fraction_of_clients": 0.5,
                    "fraction_of_rows": pytest.approx(1 - (4 + 8 + 12 + 12) / 72),
                    "steps_needed": 10}
  assert builders.truncation_report(federated.LocalSchedule("epochs", 10, 4, 1), data) is None
  assert builders.truncation_report(federated.LocalSchedule("steps", 3, 4), data) is None
  # Through a run: the synthetic config's epochs mode with a low cap records
  # the fraction of its cohort's rows that were used.
  config = _small_config(**{"local.num_steps": 3, "num_rounds": 1,
                            "clients_per_round": 30})
  summary = driver.train_and_evaluate(config, str(tmp_path), progress=False)
  assert summary["epochs_truncation"]["fraction_of_clients"] > 0.5
  sizes = np.asarray(setups.build(config).train.sizes)
  expected = np.minimum(sizes, 3 * 10).sum() / sizes.sum()   # all 30 clients, B = 10
  assert summary["final"]["rows_used_fraction"] == pytest.approx(expected, rel=1e-6)


def test_resume_refuses_a_config_that_changes_the_run(tmp_path):
  driver.train_and_evaluate(_small_config(), str(tmp_path), progress=False)
  saved = json.loads((tmp_path / run_config.FILENAME).read_text())
  assert saved["server"]["kind"] == "fedavg" and saved["num_rounds"] == 4
  for field, value in (("num_rounds", 6), ("server.learning_rate", 0.5),
                       ("algorithm.kind", "scaffold"), ("data.alpha", 0.5)):
    with pytest.raises(configuration.ConfigError,
                       match=re.escape(f"config.{field}: ") + ".* -> "):
      driver.train_and_evaluate(_small_config(**{field: value}), str(tmp_path),
                                progress=False)
  # Evaluation and checkpoint cadence may change; the finished run is kept.
  summary = driver.train_and_evaluate(
      _small_config(**{"eval_every": 1, "checkpoint.max_to_keep": 5}), str(tmp_path),
      progress=False)
  assert summary["resumed_from_round"] == 4


def test_resume_of_a_workdir_written_before_the_registries_names_the_moved_fields(tmp_path):
  driver.train_and_evaluate(_small_config(), str(tmp_path), progress=False)
  path = tmp_path / run_config.FILENAME
  saved = json.loads(path.read_text())
  # What an older fedjax_mm wrote: flat part options, server.optimizer.
  saved["server"]["optimizer"] = saved["server"].pop("kind")
  saved["aggregation"]["trim_fraction"] = 0.1
  path.write_text(json.dumps(saved))
  with pytest.raises(configuration.ConfigError) as info:
    driver.train_and_evaluate(_small_config(), str(tmp_path), progress=False)
  message = str(info.value)
  assert "\n" not in message and "written before the parts got their own config" in message
  assert "config.server.optimizer -> config.server.kind" in message
  assert ("config.aggregation.trim_fraction -> config.aggregation.trimmed_mean.trim_fraction"
          in message)


def test_return_trainable_is_the_model_the_final_eval_scored(tmp_path):
  config = _small_config(num_rounds=2)
  setup = setups.build(config)
  summary, trainable = driver.train_and_evaluate(config, str(tmp_path), progress=False,
                                                 setup=setup, return_trainable=True)
  eval_fn = jax.jit(evaluation.build_eval_fn(setup.task, setup.test, config.eval_batch_size))
  again = evaluation.summarize(jax.device_get(eval_fn(trainable, jax.device_put(setup.test))))
  assert again["accuracy"] == pytest.approx(summary["final"]["eval_accuracy"], abs=1e-6)
  assert again["loss"] == pytest.approx(summary["final"]["eval_loss"], rel=1e-6)
  # Each client's final accuracy, by hand from its own test rows' predictions.
  sizes, offsets = np.asarray(setup.test.sizes), np.asarray(setup.test.offsets)
  clients = summary["final_clients"]
  assert clients["count"] == sizes.tolist()
  for k in range(len(sizes)):
    rows = jax.tree.map(lambda a: a[offsets[k]:offsets[k] + sizes[k]], setup.test.examples)
    if not sizes[k]:
      assert clients["accuracy"][k] is None
      continue
    want = np.mean(setup.task.per_example_metrics(trainable, setup.task.frozen, rows)["accuracy"])
    # Sums of 0/1 in float32 are exact below 2**24 rows: the two differ only by the
    # final division's rounding (< 1e-7 relative).
    assert clients["accuracy"][k] == pytest.approx(float(want), abs=1e-6)
  init = setup.task.init_trainable(jax.random.key(0))
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(trainable),
                                                   jax.tree.leaves(init)))
