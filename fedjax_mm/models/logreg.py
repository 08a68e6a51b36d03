"""Multinomial logistic regression, the model of the Synthetic(alpha, beta) benchmark.

References:
  Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_mm.types import Batch, PyTree, Task


def _logits(trainable: PyTree, batch: Batch) -> jax.Array:
  params = trainable["logreg"]
  return batch["x"] @ params["w"] + params["b"]


def task(num_features: int, num_classes: int) -> Task:
  """Logistic regression ``x -> softmax(x W + b)`` as a :class:`Task`.

  Parameters start at zero, as in the FedProx experiments. There is nothing
  frozen, so ``frozen`` is an empty dict. Its one linear layer's input is
  the feature vector (``linear_inputs``: ``"logreg/w"`` -> ``x [B, 1, F]``).
  """

  def init_trainable(key: jax.Array) -> PyTree:
    del key
    return {"logreg": {"w": jnp.zeros((num_features, num_classes), jnp.float32),
                       "b": jnp.zeros((num_classes,), jnp.float32)}}

  def per_example_loss(trainable: PyTree, frozen: PyTree, batch: Batch) -> jax.Array:
    del frozen
    return optax.softmax_cross_entropy_with_integer_labels(
        _logits(trainable, batch), batch["y"])

  def per_example_metrics(trainable: PyTree, frozen: PyTree, batch: Batch):
    del frozen
    logits = _logits(trainable, batch)
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]),
        "accuracy": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32),
    }

  def linear_inputs(trainable: PyTree, frozen: PyTree, batch: Batch):
    del trainable, frozen
    return {"logreg/w": batch["x"][:, None, :].astype(jnp.float32)}

  return Task(init_trainable=init_trainable, frozen={},
              per_example_loss=per_example_loss,
              per_example_metrics=per_example_metrics, linear_inputs=linear_inputs)
