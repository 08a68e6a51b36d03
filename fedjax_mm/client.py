"""Local training of one client as pure functions (vmapped over the cohort).

Three phases, as in FedAvg: ``client_init`` copies the global parameters into
a local carry, ``client_step`` takes one optimizer step on one (masked) batch,
``client_final`` turns the carry into a :class:`ClientResult` with
``delta = global - local``. ``local_steps`` runs the first two with
``lax.scan`` over the client's data plan; padded steps and padded examples are
exact no-ops. An algorithm changes local training through one hook, a
``correction(grads, params) -> grads`` applied before the optimizer (FedProx's
proximal gradient, SCAFFOLD's control-variate correction); everything the
cohort shares is one :class:`LocalContext`.

References:
  McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data" (FedAvg), AISTATS 2017; arXiv:1602.05629.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_mm.data import federated
from fedjax_mm.types import Batch, ClientResult, LinearInputsFn, PerExampleLossFn, PyTree

CLIENT_OPTIMIZERS = ("sgd", "momentum", "adam")
# learning rate (possibly traced, from a schedule over rounds) -> transform.
ClientOptimizerFactory = Callable[[jax.Array], optax.GradientTransformation]
# (grads, local params) -> corrected grads, applied before the client optimizer.
GradCorrection = Callable[[PyTree, PyTree], PyTree]


def make_client_optimizer(name: str, *, momentum: float = 0.9
                          ) -> ClientOptimizerFactory:
  """Client optimizer factory by name; the learning rate is supplied per round."""
  if name == "sgd":
    return lambda lr: optax.sgd(lr)
  if name == "momentum":
    return lambda lr: optax.sgd(lr, momentum=momentum)
  if name == "adam":
    return lambda lr: optax.adam(lr)
  raise ValueError(f"client optimizer must be one of {CLIENT_OPTIMIZERS}, got {name!r}")


class ClientCarry(NamedTuple):
  """Local training state threaded through ``lax.scan``."""

  params: PyTree
  opt_state: optax.OptState
  loss_sum: jax.Array
  num_steps: jax.Array


def masked_mean_loss(loss_fn: PerExampleLossFn, trainable: PyTree,
                     frozen: PyTree, batch: Batch, mask: jax.Array) -> jax.Array:
  """Mean loss over the valid examples of a padded batch (0 if none)."""
  losses = loss_fn(trainable, frozen, batch)
  mask = mask.astype(losses.dtype)
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def client_init(trainable: PyTree, tx: optax.GradientTransformation) -> ClientCarry:
  return ClientCarry(params=trainable, opt_state=tx.init(trainable),
                     loss_sum=jnp.zeros((), jnp.float32),
                     num_steps=jnp.zeros((), jnp.int32))


def client_step(carry: ClientCarry, batch: Batch, mask: jax.Array, *,
                loss_fn: PerExampleLossFn, frozen: PyTree,
                tx: optax.GradientTransformation,
                example_mask: Callable[[Batch], jax.Array] | None = None,
                correction: GradCorrection | None = None) -> ClientCarry:
  """One local step; a batch with no valid example leaves the carry unchanged.

  The (combined) mask is also handed to the loss as ``batch['valid']``: a
  loss that couples the rows of a batch (InfoNCE) must not use padded rows,
  which repeat real ones, as negatives. Per-example losses ignore it.
  ``correction`` (if any) rewrites the gradient before the optimizer sees it.
  """
  if example_mask is not None:
    mask = mask & example_mask(batch)
  batch = {**batch, "valid": mask}
  loss, grads = jax.value_and_grad(masked_mean_loss, argnums=1)(
      loss_fn, carry.params, frozen, batch, mask)
  if correction is not None:
    grads = correction(grads, carry.params)
  updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
  params = optax.apply_updates(carry.params, updates)
  valid = jnp.any(mask)
  # Selecting (not multiplying by the mask) keeps padded steps exact no-ops,
  # optimizer counters included.
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)
  return ClientCarry(
      params=keep(params, carry.params),
      opt_state=keep(opt_state, carry.opt_state),
      loss_sum=carry.loss_sum + jnp.where(valid, loss, 0.0),
      num_steps=carry.num_steps + valid.astype(jnp.int32))


def client_final(trainable: PyTree, carry: ClientCarry, num_examples: jax.Array,
                 weight: jax.Array) -> ClientResult:
  """``delta = global - local``; a non-finite delta gets weight 0 and is zeroed.

  Zeroing matters: ``0 * nan`` is ``nan``, so a weight of 0 alone would still
  poison a weighted sum.
  """
  delta = jax.tree.map(jnp.subtract, trainable, carry.params)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(d)) for d in jax.tree.leaves(delta)]))
  finite &= jnp.isfinite(carry.loss_sum)
  delta = jax.tree.map(lambda d: jnp.where(finite, d, jnp.zeros_like(d)), delta)
  return ClientResult(
      delta=delta,
      weight=jnp.where(finite, weight, 0.0).astype(jnp.float32),
      num_examples=num_examples.astype(jnp.float32),
      loss_sum=jnp.where(finite, carry.loss_sum, 0.0),
      num_steps=carry.num_steps,
      is_finite=finite)


def train_on_batches(trainable: PyTree, frozen: PyTree, batches: Batch,
                     mask: jax.Array, *, loss_fn: PerExampleLossFn,
                     tx: optax.GradientTransformation,
                     example_mask: Callable[[Batch], jax.Array] | None = None) -> ClientCarry:
  """Runs local steps over explicit ``[S, B, ...]`` batches with ``[S, B]`` mask."""
  def body(carry, xs):
    batch, step_mask = xs
    return client_step(carry, batch, step_mask, loss_fn=loss_fn, frozen=frozen, tx=tx,
                       example_mask=example_mask), None
  carry, _ = jax.lax.scan(body, client_init(trainable, tx), (batches, mask))
  return carry


class LocalContext(NamedTuple):
  """What every client of a round shares (closed over by the vmapped update).

  Attributes:
    trainable: the global trainable parameters (the broadcast model).
    broadcast: the algorithm's message to every client (``()`` if none).
    frozen: frozen parameters.
    examples: the packed dataset's arrays (leading axis N).
    schedule: static local data schedule.
    loss_fn: per-example loss.
    tx: the client optimizer for this round.
    learning_rate: this round's client learning rate (a scalar).
    round: the round index (int32 scalar).
    example_mask: optional per-example trainability (see ``Task``).
    linear_inputs: the task's optional linear-layer input hook (see ``Task``).
  """

  trainable: PyTree
  broadcast: PyTree
  frozen: PyTree
  examples: Mapping[str, jax.Array]
  schedule: federated.LocalSchedule
  loss_fn: PerExampleLossFn
  tx: optax.GradientTransformation
  learning_rate: jax.Array
  round: jax.Array
  example_mask: Callable[[Batch], jax.Array] | None = None
  linear_inputs: LinearInputsFn | None = None


class ClientSlot(NamedTuple):
  """One client of the cohort (a row of the vmapped per-client inputs).

  Attributes:
    id: client id in ``[0, K)``.
    offset, size: its first row and number of rows in the packed dataset.
    key: its key for this round (data order).
    weight: its aggregation weight before the finiteness check.
  """

  id: jax.Array
  offset: jax.Array
  size: jax.Array
  key: jax.Array
  weight: jax.Array


def local_steps(ctx: LocalContext, slot: ClientSlot,
                correction: GradCorrection | None = None) -> ClientCarry:
  """Runs one client's local steps from the global parameters.

  Rows are gathered step by step inside the scan, so memory per client is one
  batch, not ``S`` batches.
  """
  positions, mask = federated.client_plan(slot.size, slot.key, ctx.schedule)
  rows = slot.offset + positions

  def body(carry, xs):
    step_rows, step_mask = xs
    batch = jax.tree.map(lambda a: a[step_rows], ctx.examples)
    return client_step(carry, batch, step_mask, loss_fn=ctx.loss_fn, frozen=ctx.frozen,
                       tx=ctx.tx, example_mask=ctx.example_mask,
                       correction=correction), None

  carry, _ = jax.lax.scan(body, client_init(ctx.trainable, ctx.tx), (rows, mask))
  return carry


def local_update(trainable: PyTree, frozen: PyTree,
                 examples: Mapping[str, jax.Array], offset: jax.Array,
                 size: jax.Array, key: jax.Array, weight: jax.Array, *,
                 schedule: federated.LocalSchedule, loss_fn: PerExampleLossFn,
                 tx: optax.GradientTransformation,
                 example_mask: Callable[[Batch], jax.Array] | None = None) -> ClientResult:
  """One FedAvg client's whole local training on its rows of the packed dataset.

  A convenience over :func:`local_steps` and :func:`client_final` for code
  that runs plain local training outside a round (the sequential reference).

  Args:
    trainable: global trainable parameters (shared across the cohort).
    frozen: frozen parameters (shared).
    examples: the packed dataset's arrays (shared, leading axis N).
    offset, size: the client's first row and number of rows.
    key: the client's key for this round (data order).
    weight: the client's aggregation weight before the finiteness check.
    schedule: static local schedule.
    loss_fn: per-example loss.
    tx: client optimizer for this round.
    example_mask: optional per-example trainability (see ``Task``).

  Returns:
    The client's :class:`ClientResult`.
  """
  ctx = LocalContext(trainable=trainable, broadcast=(), frozen=frozen, examples=examples,
                     schedule=schedule, loss_fn=loss_fn, tx=tx,
                     learning_rate=jnp.zeros((), jnp.float32),
                     round=jnp.zeros((), jnp.int32), example_mask=example_mask)
  slot = ClientSlot(id=jnp.zeros((), jnp.int32), offset=offset, size=size, key=key,
                    weight=weight)
  return client_final(trainable, local_steps(ctx, slot), size, weight)
