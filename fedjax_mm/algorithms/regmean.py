"""RegMean: each linear layer merged in closed form from its inputs' Gram matrices.

For a linear layer ``y = x W`` (Flax kernels are ``[in, out]``) RegMean picks
the merged weight that best reproduces every client's layer outputs on that
client's own inputs ``X_k`` (its rows ``x``, stacked):

    W* = argmin_W Σ_k ‖X_k W − X_k W_k‖²  =  (Σ_k G_k)⁻¹ Σ_k G_k W_k,
    G_k = X_kᵀ X_k  (the layer's input Gram matrix on client k).

The paper regularizes towards the simple mean by scaling the Grams'
off-diagonal entries: ``G̃_k = α G_k + (1 − α) diag(G_k)`` (α = 1 is the
plain regression; α = 0 weighs each input coordinate separately). Here
client k trains locally as in FedAvg, then, under its final local model,
accumulates ``G_k`` over one pass of the rows it trained on (padded and
``example_mask``-ed rows excluded; the second layer of an MLP sees its
hidden activations under the *local* first layer). In our sign convention
(``Δ_k = W − W_k``, W the global kernel) the merge is a sum of per-client
terms,

    Δ* = W − W* = (Σ_k G̃_k + λ I)⁻¹ Σ_k G̃_k Δ_k,

so clients upload ``G̃_k`` and ``G̃_k Δ_k`` as extras (summed over the
counted clients, streamed chunk by chunk; never the cohort's stack) and the
server solves. ``λ = ridge · tr(Σ G̃)/in`` is our addition (not in the
paper): it makes a singular Gram solvable (an input coordinate no client
ever saw) and, read as ``argmin Σ_k ‖X_k (W' − W_k)‖² + λ ‖W' − W‖²``,
shrinks the merge towards the current global kernel; ``ridge = 0`` is the
paper's formula. RegMean weighs clients by their Grams (their data), as the
paper does; the aggregation weights only decide who counts (a weight-0
client uploads zeros) and weigh everything else.

Which layers are linear is the task's business: ``Task.linear_inputs``
(required, checked when the round is built) names each merged kernel by its
path and gives its input rows. Every other parameter (biases, kernels the
hook does not name) gets the configured aggregator's result (by default the
weighted mean). The Gram uploads bypass the preprocess chain and the
wrappers, as SCAFFOLD's and FedDyn's extras do: RegMean is not a DP method.

References:
  Jin, Ren, Preotiuc-Pietro, Cheng, "Dataless Knowledge Fusion by Merging
  Weights of Language Models", ICLR 2023; arXiv:2212.09849 (Sec. 3, the
  closed form and the off-diagonal scaling α, a tuned hyper-parameter
  there; our default α = 0.9 is a common choice of public
  re-implementations, others use 1.0, no scaling).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import optax

from fedjax_mm import checks
from fedjax_mm import client as client_lib
from fedjax_mm.algorithms.base import Aggregates, Algorithm, ClientWork, ServerWork, no_state
from fedjax_mm.data import federated
from fedjax_mm.registry import Part
from fedjax_mm.types import PyTree

GRAM, GRAM_DELTA = "gram", "gram_delta"


def path_name(path: Sequence[Any]) -> str:
  """A ``jax.tree_util`` key path as ``"a/b/kernel"`` (the hook's naming)."""
  def part(key):
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return "/".join(part(k) for k in path)


def kernels_at(tree: PyTree, names: Iterable[str]) -> dict[str, jax.Array]:
  """The leaves of ``tree`` named by ``names``; each must be a 2-D kernel.

  Raises:
    ValueError: ``"linear_inputs: ..."`` for a name that is not a leaf of the
      trainable tree, or a leaf that is not ``[in, out]``.
  """
  leaves = {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  out = {}
  for name in names:
    if name not in leaves:
      raise ValueError(f"linear_inputs: {name!r} is not a trainable parameter; the paths are "
                       f"{tuple(leaves)}")
    if leaves[name].ndim != 2:
      raise ValueError(f"linear_inputs: {name!r} must be a 2-D kernel [in, out], got shape "
                       f"{tuple(leaves[name].shape)}")
    out[name] = leaves[name]
  return out


def input_grams(ctx: client_lib.LocalContext, slot: client_lib.ClientSlot,
                params: PyTree) -> dict[str, jax.Array]:
  """Each hooked layer's ``G = Σ x xᵀ`` over one pass of the client's rows, under ``params``.

  The pass visits exactly the distinct rows local training used (the same
  first-pass permutation and step cap, :func:`federated.rows_covered`), one
  batch at a time.

  Raises:
    ValueError: a hooked input that is not ``[B, R, in]`` with ``in`` the
      kernel's first dimension (or a bad path, :func:`kernels_at`).
  """
  schedule = ctx.schedule
  one_pass = federated.LocalSchedule("epochs", schedule.num_steps, schedule.batch_size, 1)
  positions, mask = federated.client_plan(slot.size, slot.key, one_pass)
  rows = slot.offset + positions

  def inputs_of(step_rows):
    batch = jax.tree.map(lambda a: a[step_rows], ctx.examples)
    return batch, ctx.linear_inputs(params, ctx.frozen, batch)

  shapes = jax.eval_shape(inputs_of, rows[0])[1]
  kernels = kernels_at(params, shapes)
  for name, x in shapes.items():
    if x.ndim != 3 or x.shape[-1] != kernels[name].shape[0]:
      raise ValueError(f"linear_inputs: {name!r} inputs must be [B, R, "
                       f"{kernels[name].shape[0]}], got {tuple(x.shape)}")

  def body(grams, xs):
    step_rows, step_mask = xs
    batch, inputs = inputs_of(step_rows)
    if ctx.example_mask is not None:
      step_mask = step_mask & ctx.example_mask(batch)
    m = step_mask.astype(jnp.float32)[:, None, None]
    flat = lambda x: x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return {n: grams[n] + flat(x * m).T @ flat(x) for n, x in inputs.items()}, None

  zeros = {n: jnp.zeros((x.shape[-1],) * 2, jnp.float32) for n, x in shapes.items()}
  grams, _ = jax.lax.scan(body, zeros, (rows, mask))
  return grams


def scale_off_diagonal(gram: jax.Array, alpha: float) -> jax.Array:
  """``α G + (1 − α) diag(G)``."""
  return alpha * gram + (1.0 - alpha) * jnp.diag(jnp.diag(gram))


def solve_merged(gram_sum: jax.Array, gram_delta_sum: jax.Array, ridge: float) -> jax.Array:
  """``(Σ G̃ + λ I)⁻¹ Σ G̃ Δ`` with ``λ = ridge · tr(Σ G̃)/in`` (``ridge`` if the trace is 0)."""
  d = gram_sum.shape[0]
  mean_diag = jnp.trace(gram_sum) / d
  lam = ridge * jnp.where(mean_diag > 0, mean_diag, 1.0)
  a = gram_sum + lam * jnp.eye(d, dtype=gram_sum.dtype)
  # Jacobi scaling (S A S) (S⁻¹ x) = S b, S = diag(A)^-1/2: the same solution,
  # but float32 LU then loses accuracy only with the condition number of the
  # scaled matrix (input coordinates' energies differ by orders of magnitude).
  diag = jnp.diag(a)
  s = jnp.where(diag > 0, jax.lax.rsqrt(jnp.where(diag > 0, diag, 1.0)), 1.0)[:, None]
  return s * jnp.linalg.solve(s * a * s.T, s * gram_delta_sum)


def regmean(alpha: float = 0.9, ridge: float = 1e-5) -> Algorithm:
  """RegMean merging of the task's linear layers after FedAvg local training.

  Args:
    alpha: off-diagonal scaling of the Grams, in [0, 1] (1: exact regression).
    ridge: relative ridge ``λ / mean diag(Σ G̃)``, >= 0 (0: the paper's
      formula, which fails on a singular Gram).

  Example:
    >>> algorithm = regmean(alpha=0.9)   # with server.kind=fedavg, lr 1
  """
  checks.number("alpha", alpha, lambda v: 0 <= v <= 1, "in [0, 1]")
  checks.number("ridge", ridge, lambda v: 0 <= v < float("inf"), ">= 0")

  def client_update(ctx: client_lib.LocalContext, slot: client_lib.ClientSlot, state):
    carry = client_lib.local_steps(ctx, slot)
    result = client_lib.client_final(ctx.trainable, carry, slot.size, slot.weight)
    grams = input_grams(ctx, slot, carry.params)
    deltas = kernels_at(result.delta, grams)
    # A weight-0 client (padding, excluded, or weighted out) uploads zeros.
    counts = result.weight > 0
    scaled = {n: jnp.where(counts, scale_off_diagonal(g, alpha), 0.0) for n, g in grams.items()}
    extras = {GRAM: scaled, GRAM_DELTA: {n: scaled[n] @ deltas[n] for n in scaled}}
    return result.replace(extras=extras), state, {}

  def finalize(state, agg: Aggregates):
    merged = {n: solve_merged(g, agg.extras[GRAM_DELTA][n], ridge)
              for n, g in agg.extras[GRAM].items()}
    means = kernels_at(agg.delta, merged)
    delta = jax.tree_util.tree_map_with_path(
        lambda p, x: merged.get(path_name(p), x), agg.delta)
    # How far the merge moved the hooked kernels from the aggregator's result.
    shift = optax.tree.norm({n: merged[n] - means[n] for n in merged})
    return delta, state, {"kernel_shift_from_mean": shift}

  return Algorithm(
      name="regmean",
      client=ClientWork(init_state=no_state, update=client_update),
      server=ServerWork(init=no_state, broadcast=lambda state: (), finalize=finalize),
      requires=("linear_inputs",))


PART = Part("regmean", regmean, "RegMean",
            "linear layers merged from their input Gram matrices (Jin et al., ICLR 2023)")
