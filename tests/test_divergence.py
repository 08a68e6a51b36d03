"""The divergence guard: huge-but-finite blow-ups stop the run, and the message
names the cause (client rate, server rate, custom weights) from the metrics."""

import math
import re

import numpy as np
import pytest

from fedjax_mm.simulation import divergence, driver
from test_driver import _small_config


def _run(tmp_path, **overrides):
  config = _small_config(**{"num_rounds": 3, **overrides})
  return driver.train_and_evaluate(config, str(tmp_path), progress=False)


def test_a_huge_client_rate_stops_round_one_and_blames_the_client_rate(tmp_path):
  # lr 1e30: local SGD reaches |w| ~ 1e30 (finite), so no client is excluded,
  # but the norm of the aggregate overflows float32 (1e30^2 > 3.4e38).
  with pytest.raises(driver.NonFiniteError) as e:
    _run(tmp_path, **{"client.learning_rate": 1e30})
  message = str(e.value)
  assert "\n" not in message
  assert re.fullmatch(r"round 1: aggregated update norm is inf; likely cause: the clients' "
                      r"local training diverged .*lower client\.learning_rate \(now 1e\+30\)",
                      message), message
  assert not (tmp_path / "metrics.jsonl").read_text().strip()   # no round recorded


def test_a_huge_server_rate_stops_when_the_loss_explodes_and_blames_the_server(tmp_path):
  # Round 1's clients are fine; the server multiplies their mean by 1e30, so
  # round 2's loss is ~1e29 (finite, and its update norm 0.0: every client
  # step is lost below the parameters' float precision).
  with pytest.raises(driver.NonFiniteError) as e:
    _run(tmp_path, **{"server.learning_rate": 1e30})
  message = str(e.value)
  assert "\n" not in message
  assert re.fullmatch(r"round 2: training loss \S+ exceeds divergence_factor=100 x the first "
                      r"training loss \S+; likely cause: the clients' updates were finite but "
                      r"the server step of round 1 was \S+x the aggregated update: lower "
                      r"server\.learning_rate \(now 1e\+30\)", message), message
  assert "client.learning_rate" not in message


def test_finite_updates_that_the_custom_weights_overflow_blame_the_weights(tmp_path):
  # Weights of 1e30 (the loader's cap) times client updates of ~1e10 (client
  # lr 1e8) overflow float32 in the weighted sum, while every client's own
  # update and its norm (~1e11) are finite.
  path = tmp_path / "w.npy"
  np.save(path, np.full(30, 1e30))
  with pytest.raises(driver.NonFiniteError) as e:
    _run(tmp_path / "run", **{"client.learning_rate": 1e8,
                              "aggregation.weighting": "custom",
                              "aggregation.custom_weights_path": str(path)})
  assert re.fullmatch(r"round 1: aggregated update norm is (inf|nan); likely cause: finite "
                      r"client updates summed to a non-finite aggregate with the custom weights "
                      + re.escape(f"of {path}: rescale or fix them"), str(e.value)), e.value


def _record(r, loss, update=1.0, step=1.0, delta=1.0, nonfinite=0):
  return {"round": r, "train_loss": loss, "pseudo_gradient_norm": update,
          "server_step_norm": step,
          "mean_client_delta_norm": delta, "num_nonfinite_clients": nonfinite}


def _config(**overrides):
  config = _small_config(**overrides)
  config.unlock()
  return config


def test_check_round_triggers():
  config = _config()   # 10 clients per round
  history = [_record(1, 2.0)]
  divergence.check_round(_record(2, 199.0), config, history)   # < 100 x 2.0: goes on
  with pytest.raises(divergence.NonFiniteError, match="training loss 201 exceeds "
                     "divergence_factor=100 x the first training loss 2"):
    divergence.check_round(_record(2, 201.0), config, history)
  config.divergence_factor = 5.0   # the option is read when present
  with pytest.raises(divergence.NonFiniteError, match="divergence_factor=5 x"):
    divergence.check_round(_record(2, 10.5), config, history)
  # A first round without trainable rows (loss 0) is no baseline.
  divergence.check_round(_record(2, 10.5), config, [_record(1, 0.0)])
  with pytest.raises(divergence.NonFiniteError, match="global parameters hold NaN/Inf"):
    divergence.check_round(_record(2, 2.0), config, history, params_finite=False)
  with pytest.raises(divergence.NonFiniteError, match="server step norm is inf"):
    divergence.check_round(_record(2, 2.0, step=math.inf), config, history)
  with pytest.raises(divergence.NonFiniteError, match="aggregated update norm is nan"):
    divergence.check_round(_record(2, 2.0, update=math.nan), config, history)
  # NaN server step = not tracked (no last_update in the state): no trip.
  divergence.check_round(_record(2, 2.0, step=math.nan), config, history)


def test_check_round_causes():
  config = _config(**{"client.learning_rate": 0.5, "server.learning_rate": 7.0})
  cause = lambda record, history=(): _message(config, record, history).split("cause: ")[1]
  # Clients NaN/Inf this round, no earlier amplifying server step: clients.
  assert cause(_record(1, math.nan, nonfinite=3)).endswith("client.learning_rate (now 0.5)")
  # Round 1's server step was 20x its input (> 10): the server, even though
  # round 2's clients then failed on the blown-up model.
  history = [_record(1, 2.0, update=0.5, step=10.0)]
  assert "server step of round 1 was 20x" in cause(_record(2, math.nan, nonfinite=3), history)
  assert cause(_record(2, 1e4), history).endswith("server.learning_rate (now 7.0)")
  # A gain of exactly the limit is an ordinary step: the clients' updates.
  history = [_record(1, 2.0, update=0.5, step=5.0)]
  assert cause(_record(2, 1e4), history).startswith(
      "the clients' updates drive the loss up through ordinary server steps")
  # Finite client updates, non-finite aggregate: the custom weights if any.
  assert cause(_record(1, 2.0, update=math.inf)).startswith("finite client updates too "
                                                            "large to sum in float32")
  config.aggregation.weighting, config.aggregation.custom_weights_path = "custom", "/w.npy"
  assert "custom weights of /w.npy" in cause(_record(1, 2.0, update=math.inf))


def _message(config, record, history):
  with pytest.raises(divergence.NonFiniteError) as e:
    divergence.check_round(record, config, history)
  return str(e.value)


@pytest.mark.parametrize("value", [1.0, 0.5, -3.0, math.inf, math.nan, True, "10"])
def test_divergence_factor_is_validated(value):
  with pytest.raises(ValueError, match=r"^config\.divergence_factor: must be a finite number "
                                       r"> 1, got "):
    divergence.check_factor(value)
  config = _config()
  with config.ignore_type():   # the configs declare it a float; a user file may not
    config.divergence_factor = value
  with pytest.raises(ValueError, match="config.divergence_factor"):
    divergence.check_round(_record(2, 2.0), config, [_record(1, 2.0)])


def test_safe_norm_does_not_overflow_on_finite_values():
  import jax.numpy as jnp
  big = {"a": jnp.full((4,), 1e30, jnp.float32), "b": jnp.full((5,), -1e30, jnp.float32)}
  # sqrt(9) * 1e30 = 3e30; float32 rounding of the scaled sum is < 1e-6 relative.
  assert float(divergence._safe_norm(big)) == pytest.approx(3e30, rel=1e-6)
  assert math.isinf(float(divergence._safe_norm({"a": jnp.array([1.0, jnp.inf])})))
  assert float(divergence._safe_norm({"a": jnp.zeros(3)})) == 0.0


def test_the_driver_refuses_a_bad_divergence_factor_before_any_round(tmp_path):
  config = _config(num_rounds=1)
  config.divergence_factor = 0.5
  with pytest.raises(driver.configuration.ConfigError,
                     match=r"^config\.divergence_factor: must be a finite number > 1, got 0\.5$"):
    driver.train_and_evaluate(config, str(tmp_path), progress=False)
  assert not (tmp_path / "metrics.jsonl").exists()
