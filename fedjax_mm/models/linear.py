"""A linear projector ``x -> x W`` under squared error, the interference control's model.

The kernel is Flax-style ``[in, out]`` (``{'projector': {'kernel': [m, n]}}``),
so matrix-aware aggregators (Fed-CMP's CRA) decompose it like the Fed-MA
projector. Evaluation reports ``accuracy`` as a per-example R² clipped at 0,
``max(0, 1 - ‖ŷ - y‖² / E‖y‖²)`` with ``E‖y‖²`` the test targets' known
expected energy (``‖W*‖_F²`` for ``y = x W*``, ``x ~ N(0, I)``): its mean is
the test R² of the shared map while every row's error is below that energy,
1 only at ``W = W*``, and it stays in [0, 1] as the driver needs.

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (the linear projector
  between frozen towers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_mm import checks
from fedjax_mm.types import Batch, PyTree, Task


def _residual(trainable: PyTree, batch: Batch) -> jax.Array:
  return batch["x"] @ trainable["projector"]["kernel"] - batch["y"]


def task(num_inputs: int, num_outputs: int, target_energy: float) -> Task:
  """The linear projector as a :class:`Task` (kernel starts at zero, nothing frozen).

  Args:
    num_inputs: m.
    num_outputs: n.
    target_energy: ``E‖y‖²`` of a test row (> 0), the R² denominator.
  """
  checks.number("target_energy", target_energy, lambda v: v > 0, "> 0")

  def init_trainable(key: jax.Array) -> PyTree:
    del key
    return {"projector": {"kernel": jnp.zeros((num_inputs, num_outputs), jnp.float32)}}

  def per_example_loss(trainable: PyTree, frozen: PyTree, batch: Batch) -> jax.Array:
    del frozen   # 1/2 ‖ŷ - y‖²: its Hessian in W is E[xᵀx] = I (lr = contraction factor)
    return 0.5 * jnp.sum(_residual(trainable, batch) ** 2, axis=-1)

  def per_example_metrics(trainable: PyTree, frozen: PyTree, batch: Batch):
    del frozen
    error = jnp.sum(_residual(trainable, batch) ** 2, axis=-1)
    return {"loss": 0.5 * error,
            "accuracy": jnp.maximum(0.0, 1.0 - error / target_energy)}

  return Task(init_trainable=init_trainable, frozen={},
              per_example_loss=per_example_loss,
              per_example_metrics=per_example_metrics)
