"""Centralized training on the union of the clients' data: the ceiling.

The reference point a federated run is compared with: the same model, loss
and example budget, with all the clients' training rows pooled in one place
and shuffled (a fresh permutation per epoch). It reuses the client step, so
masks (padding, ``Task.example_mask``) behave exactly as in local training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from fedjax_mm import client as client_lib
from fedjax_mm.data import federated
from fedjax_mm.types import PyTree, Task, initial_trainable

_STEPS_PER_CALL = 100


def train(task: Task, data: federated.FederatedData, *, num_steps: int, batch_size: int,
          optimizer: optax.GradientTransformation, seed: int,
          trainable: PyTree | None = None, progress: bool = False) -> PyTree:
  """Trains ``task``'s trainable parameters on all rows of ``data``.

  Args:
    task: the model.
    data: a packed population; client boundaries are ignored.
    num_steps: optimizer steps.
    batch_size: examples per step.
    optimizer: an optax transform.
    seed: seeds the initial parameters (if not given) and the data order.
    trainable: starting parameters (default: ``initial_trainable(task, seed)``, a
      federated run's round-0 parameters).
    progress: show a progress bar.

  Returns:
    The trained trainable parameters.
  """
  rng = np.random.default_rng(seed)
  n = data.num_examples
  if trainable is None:
    trainable = initial_trainable(task, seed)
  examples = jax.device_put(data.examples)
  frozen = jax.device_put(task.frozen)

  # Data and frozen weights are arguments, not closed-over compile-time constants.
  @jax.jit
  def run(carry: client_lib.ClientCarry, rows_SxB: jax.Array, valid_S: jax.Array,
          examples, frozen):
    def step(carry, rows):
      batch = jax.tree.map(lambda a: a[rows], examples)
      return client_lib.client_step(
          carry, batch, jnp.ones(rows.shape, jnp.bool_), loss_fn=task.per_example_loss,
          frozen=frozen, tx=optimizer, example_mask=task.example_mask)

    def body(carry, xs):
      rows, valid = xs
      # The padded steps of the last call are skipped, not computed and
      # masked: unbatched, lax.cond runs one branch, and with a big frozen LM
      # a wasted step costs as much as a real one.
      return jax.lax.cond(valid, step, lambda c, _: c, carry, rows), None
    return jax.lax.scan(body, carry, (rows_SxB, valid_S))[0]

  # Row order: concatenated epoch permutations, cut into steps, padded to a
  # whole number of calls so one compiled program serves them all.
  calls = -(-num_steps // _STEPS_PER_CALL)
  epochs = -(-calls * _STEPS_PER_CALL * batch_size // n)
  order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
  rows = order[:calls * _STEPS_PER_CALL * batch_size].astype(np.int32)
  rows = rows.reshape(calls, _STEPS_PER_CALL, batch_size)
  valid = (np.arange(calls * _STEPS_PER_CALL) < num_steps).reshape(calls, _STEPS_PER_CALL)
  carry = client_lib.client_init(trainable, optimizer)
  bar = tqdm.tqdm(total=num_steps, disable=not progress, desc="centralized", unit="step")
  for c in range(calls):
    carry = run(carry, rows[c], valid[c], examples, frozen)
    # Reading the loss waits for the call (dispatch is asynchronous), so the
    # bar advances when the steps are done, not when they are queued.
    loss = float(carry.loss_sum) / max(int(carry.num_steps), 1)
    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    bar.update(int(valid[c].sum()))
  bar.close()
  return carry.params
