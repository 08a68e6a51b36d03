"""Custom aggregation weights: every file the round cannot use is refused up
front, in one line naming the path and the problem."""

import re

import numpy as np
import pytest

from fedjax_mm import configuration
from fedjax_mm.data import federated
from fedjax_mm.simulation import builders
from fedjax_mm.simulation.weights import load_custom_weights
from fedjax_mm.types import Task
from test_driver import _small_config

with np.errstate(over="ignore"):   # the overflow is the point
  # float16 holds at most 65504: a count of 70000 saved as float16 is inf.
  _FLOAT16_COUNTS = np.array([1, 70000, 2]).astype(np.float16)

_BAD = {
    "shape": (np.ones(4), r"must hold one weight per client, shape \(3,\), got shape \(4,\)"),
    "2-d": (np.ones((3, 1)), r"shape \(3,\), got shape \(3, 1\)"),
    "nan": (np.array([1.0, np.nan, 2.0]), r"must be finite, got nan at client 1 \(1 non-finite\)"),
    "inf": (np.array([1.0, 2.0, np.inf]), r"must be finite, got inf at client 2"),
    "float16 overflow": (_FLOAT16_COUNTS, r"must be finite, got inf at client 1"),
    "negative": (np.array([1.0, -0.5, 2.0]), r"must be >= 0, got -0.5 at client 1"),
    # -1e-50 casts to -0.0 in float32: still a negative weight in the file.
    "tiny negative": (np.array([1.0, -1e-50, 2.0]), r"must be >= 0, got -1e-50"),
    "all zero": (np.zeros(3), r"must not all be zero"),
    "float32 overflow": (np.array([1.0, 1e39, 1.0]),
                         r"must be <= 1e\+30 .*got 1e\+39 at client 1, which overflows float32"),
    "above cap": (np.array([1.0, 1e31, 1.0], np.float32), r"which is above 1e\+30"),
    "underflow": (np.array([1.0, 1e-50, 1.0]), r"positive weights must be >= 1e-30 in float32"),
    "strings": (np.array(["1", "2", "3"]), r"must hold real numbers, got dtype <U1"),
    "complex": (np.ones(3, np.complex64), r"must hold real numbers, got dtype complex64"),
}


@pytest.mark.parametrize("name", sorted(_BAD))
def test_unusable_weights_are_refused_in_one_line(tmp_path, name):
  weights, problem = _BAD[name]
  path = tmp_path / "w.npy"
  np.save(path, weights)
  with pytest.raises(ValueError) as e:
    load_custom_weights(path, 3)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"{path}: "), message
  assert re.search(problem, message), message


def test_unreadable_file_is_refused(tmp_path):
  path = tmp_path / "w.npy"
  np.save(path, np.ones(3))
  path.write_bytes(path.read_bytes()[:20])   # a truncated header
  with pytest.raises(ValueError, match=rf"^{path}: must be a readable \.npy array, got "):
    load_custom_weights(path, 3)
  with pytest.raises(ValueError, match="must be a readable .npy array"):
    load_custom_weights(tmp_path / "absent.npy", 3)


@pytest.mark.parametrize("weights", [np.array([0, 3, 1]), np.array([True, False, True]),
                                     np.array([0.0, 1e-30, 1e30])])
def test_usable_weights_load_as_float32(tmp_path, weights):
  path = tmp_path / "w.npy"
  np.save(path, weights)
  loaded = load_custom_weights(path, 3)
  assert loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, weights.astype(np.float32))


def test_the_driver_s_weights_go_through_the_loader(tmp_path):
  data = federated.pack({"x": np.zeros((5, 1))}, np.array([0, 0, 1, 2, 2]), 3)
  task = Task(init_trainable=None, frozen={}, per_example_loss=None, per_example_metrics=None)
  config = _small_config(**{"aggregation.weighting": "custom",
                            "aggregation.custom_weights_path": str(tmp_path / "w.npy")})
  np.save(tmp_path / "w.npy", np.array([1.0, np.nan, 2.0]))
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.aggregation\.custom_weights_path: .*w\.npy: weights must "
                           r"be finite, got nan at client 1"):
    builders.aggregation_weights(config, data, task)
  np.save(tmp_path / "w.npy", np.array([1.0, 0.0, 2.0]))
  np.testing.assert_array_equal(builders.aggregation_weights(config, data, task), [1, 0, 2])
