"""Tests for fedjax_mm.evaluation: per-client sums and their summaries."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm import evaluation
from fedjax_mm.data import federated
from fedjax_mm.models import logreg

# Tiny population: 4 clients of sizes 3, 0, 2, 4 (N = 9), F = 2, 3 classes.
_OWNERS = np.array([0, 0, 0, 2, 2, 3, 3, 3, 3])
_X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0],
               [-1.0, 0.5], [2.0, -1.0],
               [0.5, 0.5], [-2.0, 0.0], [0.0, -1.0], [3.0, 2.0]], np.float32)
_Y = np.array([0, 1, 2, 2, 0, 1, 2, 1, 0], np.int32)
_W = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]], np.float32)
_B = np.array([0.1, -0.2, 0.3], np.float32)


def _data() -> federated.FederatedData:
  return federated.pack({"x": _X, "y": _Y}, _OWNERS, num_clients=4)


def _trainable():
  return {"logreg": {"w": jnp.asarray(_W), "b": jnp.asarray(_B)}}


def _numpy_reference():
  logits = _X.astype(np.float64) @ _W + _B
  # No ties, so argmax is unambiguous.
  top2 = np.sort(logits, axis=1)[:, -2:]
  assert np.all(top2[:, 1] - top2[:, 0] > 1e-3)
  lse = np.log(np.exp(logits).sum(axis=1))
  loss = lse - logits[np.arange(_Y.size), _Y]
  correct = (logits.argmax(axis=1) == _Y).astype(np.float64)
  count = np.bincount(_OWNERS, minlength=4).astype(np.float64)
  return {"count": count,
          "loss": np.bincount(_OWNERS, weights=loss, minlength=4),
          "accuracy": np.bincount(_OWNERS, weights=correct, minlength=4)}


def test_reference_is_not_trivial():
  ref = _numpy_reference()
  # Some right, some wrong, so accuracy sums actually discriminate.
  np.testing.assert_array_equal(ref["count"], [3, 0, 2, 4])
  assert 0 < ref["accuracy"].sum() < 9
  assert np.all(ref["loss"][[0, 2, 3]] > 0) and ref["loss"][1] == 0


@pytest.mark.parametrize("batch_size", [4, 1, 2, 9, 16])
def test_eval_fn_matches_numpy(batch_size):
  data = _data()
  # Balanced batches: 2 -> 5 x 2 (one padded row), 4 -> 3 x 3, 16 -> 1 x 9;
  # 1 and 9 divide N = 9.
  eval_fn = jax.jit(evaluation.build_eval_fn(logreg.task(2, 3), data, batch_size))
  out = jax.device_get(eval_fn(_trainable(), jax.device_put(data)))
  ref = _numpy_reference()
  assert set(out) == {"count", "loss", "accuracy"}
  for key in ref:
    assert out[key].shape == (4,)
    np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("n, batch_size, rows_per_batch", [
    (100, 64, 50), (9, 4, 3), (9, 2, 2), (7, 16, 7), (10, 3, 3)])
def test_eval_batches_are_balanced_and_padding_is_dropped(n, batch_size, rows_per_batch):
  # A metric that reports the size of the batch its row was scored in: the
  # per-client sum is n x (rows per batch) when every real row counts once
  # and no padded row does. Hand-computed: 100 rows at <= 64 -> 2 x 50 (not
  # 2 x 64 with 28 padded), 9 at <= 4 -> 3 x 3, 10 at <= 3 -> 4 x 3 (2 padded).
  task = logreg.task(2, 3)
  task = task._replace(per_example_metrics=lambda t, f, batch: {
      "batch_rows": jnp.full(batch["x"].shape[:1], batch["x"].shape[0], jnp.float32)})
  data = federated.pack({"x": np.zeros((n, 2), np.float32), "y": np.zeros(n, np.int32)},
                        np.zeros(n, np.int64), num_clients=1)
  out = jax.device_get(jax.jit(evaluation.build_eval_fn(task, data, batch_size))(
      _trainable(), jax.device_put(data)))
  np.testing.assert_array_equal(out["count"], [n])
  np.testing.assert_array_equal(out["batch_rows"], [n * rows_per_batch])


def test_eval_fn_hand_counts_and_accuracy():
  # The accuracy sums by hand: logits argmax per row with _W, _B above.
  # row: logits                         argmax  y  correct
  # 0  [1.1, -1.2, 0.8]                   0     0    1
  # 1  [0.1,  1.8, -0.2]                  1     1    1
  # 2  [1.1,  0.8, 0.3]                   0     2    0
  # 3  [-0.9, 1.8, -0.45]                 1     2    0
  # 4  [2.1, -4.2, 1.8]                   0     0    1
  # 5  [0.6,  0.3, 0.3]                   0     1    0
  # 6  [-1.9, 1.8, -0.7]                  1     2    0
  # 7  [0.1, -2.2, 0.8]                   2     1    0
  # 8  [3.1,  0.8, 0.8]                   0     0    1
  data = _data()
  eval_fn = evaluation.build_eval_fn(logreg.task(2, 3), data, 4)
  out = jax.device_get(jax.jit(eval_fn)(_trainable(), data))
  np.testing.assert_array_equal(out["count"], [3, 0, 2, 4])
  np.testing.assert_array_equal(out["accuracy"], [2, 0, 1, 1])


def test_eval_fn_zero_model_loss_is_log_classes():
  data = _data()
  task = logreg.task(2, 3)
  out = jax.device_get(jax.jit(evaluation.build_eval_fn(task, data, 4))(
      task.init_trainable(jax.random.key(0)), data))
  np.testing.assert_allclose(out["loss"], np.array([3, 0, 2, 4]) * math.log(3), rtol=1e-6)


def _hand_per_client():
  counts = [2, 4, 0, 5, 1, 10, 3, 2, 4, 5, 8, 6]      # total 50, client 2 empty
  correct = [1, 4, 0, 5, 0, 7, 3, 1, 2, 5, 6, 3]      # total 37
  loss = [1.0, 2.0, 0.0, 3.0, 0.5, 4.0, 1.5, 1.0, 2.0, 2.5, 3.5, 3.0]  # total 24
  return {"count": np.array(counts, np.float32),
          "accuracy": np.array(correct, np.float32),
          "loss": np.array(loss, np.float32)}


def test_summarize_hand_computed():
  s = evaluation.summarize(_hand_per_client())
  assert set(s) == {"loss", "accuracy", "client_accuracy_mean",
                    "client_accuracy_worst10", "client_accuracy_p10"}
  # Global: totals over examples.
  assert s["accuracy"] == pytest.approx(37 / 50)
  assert s["loss"] == pytest.approx(24 / 50)
  # Per-client accuracies of the 11 non-empty clients, sorted:
  # 0, .5, .5, .5, .5, .7, .75, 1, 1, 1, 1 (client 2 has no rows: excluded).
  assert s["client_accuracy_mean"] == pytest.approx(7.45 / 11)
  # Worst 10%: ceil(0.1 * 11) = 2 clients -> (0 + .5) / 2.
  assert s["client_accuracy_worst10"] == pytest.approx(0.25)
  # 10th percentile (linear): position 0.1 * 10 = 1 -> the second smallest.
  assert s["client_accuracy_p10"] == pytest.approx(0.5)
  assert all(isinstance(v, float) for v in s.values())


def test_summarize_without_accuracy_gives_the_means_only():
  # A caption-loss-only task (e.g. the real setup's held-out stamps).
  per_client = {k: v for k, v in _hand_per_client().items() if k != "accuracy"}
  assert evaluation.summarize(per_client) == {"loss": pytest.approx(24 / 50)}


def test_summarize_worst_fraction_and_ordering():
  s = evaluation.summarize(_hand_per_client(), worst_fraction=0.3)
  # ceil(0.3 * 11) = 4 worst: 0, .5, .5, .5.
  assert s["client_accuracy_worst10"] == pytest.approx(1.5 / 4)
  s = evaluation.summarize(_hand_per_client(), worst_fraction=1.0)
  assert s["client_accuracy_worst10"] == pytest.approx(s["client_accuracy_mean"])


def test_summarize_p10_interpolates():
  # Six clients with accuracies 0, .2, .4, .6, .8, 1 (10 rows each) plus an empty one.
  correct = np.array([0, 2, 4, 6, 8, 10, 0], np.float64)
  count = np.array([10, 10, 10, 10, 10, 10, 0], np.float64)
  s = evaluation.summarize({"count": count, "accuracy": correct, "loss": np.zeros(7)})
  # Linear percentile: position 0.1 * (6 - 1) = 0.5, halfway between 0 and .2.
  assert s["client_accuracy_p10"] == pytest.approx(0.1)
  assert s["client_accuracy_worst10"] == pytest.approx(0.0)  # ceil(0.6) = 1 client
  assert s["client_accuracy_mean"] == pytest.approx(0.5)
  assert s["accuracy"] == pytest.approx(0.5)


def test_summarize_single_client_and_empty():
  one = evaluation.summarize({"count": np.array([0.0, 4.0]),
                              "accuracy": np.array([0.0, 3.0]),
                              "loss": np.array([0.0, 2.0])})
  assert one["accuracy"] == one["client_accuracy_mean"] == pytest.approx(0.75)
  assert one["client_accuracy_worst10"] == pytest.approx(0.75)
  assert one["loss"] == pytest.approx(0.5)
  empty = evaluation.summarize({"count": np.zeros(3), "accuracy": np.zeros(3),
                                "loss": np.zeros(3)})
  assert math.isnan(empty["client_accuracy_mean"])
  assert math.isnan(empty["client_accuracy_worst10"])
  assert math.isnan(empty["client_accuracy_p10"])


def test_eval_then_summarize_end_to_end():
  data = _data()
  out = jax.device_get(jax.jit(evaluation.build_eval_fn(logreg.task(2, 3), data, 4))(
      _trainable(), data))
  s = evaluation.summarize(out)
  assert s["accuracy"] == pytest.approx(4 / 9)
  # Clients 0, 2, 3 (client 1 has no rows): 2/3, 1/2, 1/4.
  assert s["client_accuracy_mean"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 4) / 3)
  assert s["client_accuracy_worst10"] == pytest.approx(0.25)
  assert s["loss"] == pytest.approx(_numpy_reference()["loss"].sum() / 9, rel=1e-5)
