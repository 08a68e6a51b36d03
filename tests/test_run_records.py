"""What a run leaves on disk and how it resumes: trainable rows counted per
round, strict JSON records, an atomic config.json, and a resume that falls
back past a damaged checkpoint."""

import json
import logging
import math
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fedjax_mm import configuration, metrics, setups
from fedjax_mm.data import federated
from fedjax_mm.simulation import driver, round as round_lib, run_config
from test_driver import _small_config


def _strict_loads(text):
  def refuse(token):
    raise ValueError(f"non-standard JSON token {token}")
  return json.loads(text, parse_constant=refuse)


def test_records_are_strict_json_with_null_for_non_finite(tmp_path):
  record = {"round": 1, "loss": math.nan, "norm": math.inf, "low": -math.inf, "ok": 0.5,
            "nested": {"a": [1.0, math.nan, (math.inf, 2)]}}
  metrics.rewrite(tmp_path, [record])
  metrics.append(tmp_path, record)
  metrics.write_summary(tmp_path, {"final": record})
  lines = (tmp_path / metrics.METRICS_FILE).read_text().splitlines()
  assert len(lines) == 2
  expected = {"round": 1, "loss": None, "norm": None, "low": None, "ok": 0.5,
              "nested": {"a": [1.0, None, [None, 2]]}}
  assert all(_strict_loads(line) == expected for line in lines)
  assert _strict_loads((tmp_path / metrics.SUMMARY_FILE).read_text()) == {"final": expected}
  assert sorted(os.listdir(tmp_path)) == [metrics.METRICS_FILE, metrics.SUMMARY_FILE]


def _config(value):
  config = ml_collections.ConfigDict({"num_rounds": value, "server": {"lr": 0.5}})
  return config


def test_config_json_is_written_atomically(tmp_path, monkeypatch):
  run_config.save(tmp_path, _config(4))
  before = (tmp_path / run_config.FILENAME).read_text()

  def killed(fd):   # the process dies after writing, before the file is durable
    raise OSError("killed")
  monkeypatch.setattr(run_config.os, "fsync", killed)
  with pytest.raises(OSError, match="killed"):
    run_config.save(tmp_path, _config(6))
  assert (tmp_path / run_config.FILENAME).read_text() == before
  assert os.listdir(tmp_path) == [run_config.FILENAME]   # no temp file left
  monkeypatch.undo()
  run_config.save(tmp_path, _config(6))
  assert run_config.load(tmp_path)["num_rounds"] == 6


@pytest.mark.parametrize("content", ['{"num_rounds": 4, "ser', "", "[1, 2]"])
def test_a_damaged_config_json_is_one_line_naming_the_file(tmp_path, content):
  (tmp_path / run_config.FILENAME).write_text(content)
  with pytest.raises(configuration.ConfigError) as e:
    run_config.check_resume(tmp_path, _config(4))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"{tmp_path / run_config.FILENAME}: must be the run's config as "
                            "a JSON object, got ")
  assert run_config.load(tmp_path / "absent") is None


def test_divergence_factor_may_change_on_resume():
  saved = {"num_rounds": 4}
  assert run_config.changed_fields(saved, {"num_rounds": 4, "divergence_factor": 10.0}) == []


def _masked_setup(config, trainable_clients):
  """The synthetic setup with only ``trainable_clients``' rows passing the mask."""
  setup = setups.build(config)
  owners = federated.example_owners(setup.train)
  examples = {**setup.train.examples, "trainable": np.isin(owners, trainable_clients)}
  return setup._replace(train=setup.train.replace(examples=examples),
                        task=setup.task._replace(example_mask=lambda b: b["trainable"]))


def _cohorts(config, num_rounds):
  """Each round's cohort, from the round's own sampling function."""
  spec = round_lib.RoundSpec(num_clients=config.data.num_clients,
                             cohort_size=config.clients_per_round, chunk_size=0,
                             schedule=federated.LocalSchedule("steps", 1, 1))
  state = lambda r: types.SimpleNamespace(rng=jax.random.key(config.seed), round=jnp.int32(r))
  return [set(np.asarray(round_lib.cohort_ids(state(r), spec, None)).tolist())
          for r in range(num_rounds)]


def test_rounds_without_trainable_rows_are_flagged_and_counted(tmp_path):
  config = _small_config(num_rounds=6, clients_per_round=1)
  even = np.arange(0, config.data.num_clients, 2)
  summary = driver.train_and_evaluate(config, str(tmp_path), progress=False,
                                      setup=_masked_setup(config, even))
  records = [_strict_loads(line)
             for line in (tmp_path / metrics.METRICS_FILE).read_text().splitlines()]
  expected = [int(not (c & set(even.tolist()))) for c in _cohorts(config, 6)]
  assert 0 < sum(expected) < 6, expected   # both kinds of round occur in this draw
  assert [r["no_trainable_rows"] for r in records] == expected
  assert summary["rounds_without_trainable_rows"] == sum(expected)
  # The flag agrees with what the server saw: no update exactly then.
  assert [int(r["update_norm"] == 0.0) for r in records] == expected


def test_a_run_whose_rounds_all_lack_trainable_rows_is_an_error(tmp_path):
  config = _small_config(num_rounds=2, clients_per_round=1)
  sampled = set.union(*_cohorts(config, 2))
  never = [k for k in range(config.data.num_clients) if k not in sampled][:1]
  with pytest.raises(driver.NoTrainableRowsError,
                     match=r"^no round of 2 trained on any row \(every sampled client's rows "
                           r"fail the task's example mask\); 2 rounds recorded in "):
    driver.train_and_evaluate(config, str(tmp_path / "some"), progress=False,
                              setup=_masked_setup(config, never))
  assert _strict_loads((tmp_path / "some" / "summary.json").read_text())[
      "rounds_without_trainable_rows"] == 2
  # No trainable row anywhere: refused before any round.
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.data: must give some client a row that can train, got "
                           r"none of the \d+ training rows"):
    driver.train_and_evaluate(config, str(tmp_path / "none"), progress=False,
                              setup=_masked_setup(config, []))


def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path, caplog):
  config = _small_config(num_rounds=4)   # checkpoints at rounds 2 and 4
  first = driver.train_and_evaluate(config, str(tmp_path), progress=False)
  step4 = tmp_path / "checkpoints" / "4"
  for data_file in (step4 / "state").rglob("d/*"):
    os.truncate(data_file, data_file.stat().st_size // 2)
  with caplog.at_level(logging.WARNING):
    again = driver.train_and_evaluate(config, str(tmp_path), progress=False)
  assert again["resumed_from_round"] == 2
  notes = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(notes) == 1 and notes[0].startswith("checkpoint step 4 does not restore (")
  assert notes[0].endswith(f"moved to {step4}.corrupt; resuming from step 2")
  assert (tmp_path / "checkpoints" / "4.corrupt").is_dir() and step4.is_dir()
  # Rounds 3 and 4 recomputed from round 2's state: the same run, to float32
  # rounding of a recompiled (possibly re-fused) program, < 1e-6 relative.
  for key in ("train_loss", "eval_loss", "update_norm"):
    assert again["final"][key] == pytest.approx(first["final"][key], rel=1e-6), key
  assert len(metrics.read(tmp_path)) == 4
  # The trajectory diagnostics (trajectory.py) in every record and the summary;
  # the path continues from round 2's restored length against the same W_0
  # (the round-0 state): bit for bit, as it ran uninterrupted.
  path = ("path_length", "distance_from_init", "path_efficiency")
  keys = {"pseudo_gradient_cosine", "pseudo_gradient_norm", "update_norm", *path}
  assert all(keys <= set(r) for r in metrics.read(tmp_path)) and keys <= set(again["final"])
  assert 0 < first["final"]["path_efficiency"] <= 1 + 1e-6   # float32 rounding of D / L
  for key in path:
    assert again["final"][key] == first["final"][key], key
