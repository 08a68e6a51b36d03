"""The adaptive FedOpt rules as optax transforms: FedAdam, FedYogi, FedAdagrad.

Each ``scale_by_*`` maps the pseudo-gradient ``Δ`` (mean client delta, with the
sign of a gradient) to the direction ``m / (√v + τ)`` (possibly bias corrected),
without the learning rate; :mod:`fedjax_mm.server.fedopt` chains it with
``-η``. The update rules, the options ``b1``, ``b2``, ``tau``, ``convention``,
``bias_correction``, ``tau_placement``, ``initial_v`` and their presets are
documented once, in :mod:`fedjax_mm.server.conventions`.

References:
  Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295,
  Algorithm 2.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_mm.server import conventions
from fedjax_mm.server.conventions import DEFAULT_CONVENTION


class FedAdamState(NamedTuple):
  """State of :func:`scale_by_fedadam`: update count and the two moments."""

  count: jax.Array  # int32 scalar, number of updates applied (= rounds).
  mu: optax.Updates
  nu: optax.Updates


class FedYogiState(NamedTuple):
  """State of :func:`scale_by_fedyogi`: update count and the two moments."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


class FedAdagradState(NamedTuple):
  """State of :func:`scale_by_fedadagrad`: update count and the two moments."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def _one_minus_pow(decay: float, t: jax.Array) -> jax.Array:
  """``1 - decay**t`` in f32 without cancellation.

  ``1 - 0.999**t`` computed directly in f32 loses ~4 digits for small ``t``
  (the 1e-5 relative error of optax's own bias correction); ``-expm1(t·ln β)``
  with ``ln β`` taken in float64 keeps it to a few ulps.
  """
  if decay == 0.0:
    return jnp.ones_like(t)  # 0**t = 0 for the t >= 1 used here.
  return -jnp.expm1(t * math.log(decay))


def _scale_by_adaptive(
    state_cls: type,
    update_nu: Callable[[optax.Updates, optax.Updates], optax.Updates],
    correct_nu: bool,
    opts: conventions.Options,
) -> optax.GradientTransformation:
  """Shared body of the FedOpt rules; they differ only in the v update."""
  b1, b2, tau = opts.b1, opts.b2, opts.tau
  # The Flower exponent is server_round + 1 with server_round = our count.
  exponent_offset = 1 if opts.bias_correction == "from_two" else 0

  def init_fn(params: optax.Params) -> NamedTuple:
    return state_cls(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params),
        nu=optax.tree.full_like(params, opts.initial_v),
    )

  def update_fn(updates: optax.Updates, state: NamedTuple,
                params: optax.Params | None = None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = update_nu(updates, state.nu)
    count = optax.safe_increment(state.count)

    if opts.bias_correction == "none":
      # Without correction the τ placements coincide.
      direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), mu, nu)
    else:
      t = (count + exponent_offset).astype(jnp.float32)
      c1 = _one_minus_pow(b1, t)
      c2 = _one_minus_pow(b2, t) if correct_nu else jnp.ones([], jnp.float32)
      if opts.tau_placement == "corrected":
        # optax: m̂ / (√v̂ + τ), dividing in the leaf's dtype as optax does.
        direction = jax.tree.map(
            lambda m, v: (m / c1.astype(m.dtype)) /
            (jnp.sqrt(v / c2.astype(v.dtype)) + tau), mu, nu)
      else:
        # Flower/TFF fold the correction into the step size.
        scale = jnp.sqrt(c2) / c1
        direction = jax.tree.map(
            lambda m, v: scale.astype(m.dtype) * m / (jnp.sqrt(v) + tau), mu,
            nu)
    return direction, state_cls(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_fedadam(
    b1: float | None = None,
    b2: float | None = None,
    tau: float | None = None,
    *,
    convention: str = DEFAULT_CONVENTION,
    bias_correction: str | None = None,
    tau_placement: str | None = None,
    initial_v: float | None = None,
) -> optax.GradientTransformation:
  """Rescales Δ by the FedAdam rule ``v ← β2·v + (1 - β2)·Δ²`` (no η).

  Args:
    b1, b2, tau, convention, bias_correction, tau_placement, initial_v: the
      shared FedOpt options, see :mod:`fedjax_mm.server.conventions`.

  Returns:
    A transform with state :class:`FedAdamState`.

  Raises:
    ValueError: on an unknown option value or an out-of-range number.
  """
  opts = conventions.resolve(
      "fedadam", convention, b1=b1, b2=b2, tau=tau,
      bias_correction=bias_correction, tau_placement=tau_placement,
      initial_v=initial_v)
  update_nu = lambda g, v: optax.tree.update_moment_per_elem_norm(
      g, v, opts.b2, 2)
  return _scale_by_adaptive(FedAdamState, update_nu, True, opts)


def scale_by_fedyogi(
    b1: float | None = None,
    b2: float | None = None,
    tau: float | None = None,
    *,
    convention: str = DEFAULT_CONVENTION,
    bias_correction: str | None = None,
    tau_placement: str | None = None,
    initial_v: float | None = None,
) -> optax.GradientTransformation:
  """Rescales Δ by the FedYogi rule ``v ← v - (1 - β2)·Δ²·sign(v - Δ²)`` (no η).

  v moves towards Δ² by an additive step, so it cannot collapse after one
  large Δ as Adam's average can.

  Args:
    b1, b2, tau, convention, bias_correction, tau_placement, initial_v: the
      shared FedOpt options, see :mod:`fedjax_mm.server.conventions`.

  Returns:
    A transform with state :class:`FedYogiState`.

  Raises:
    ValueError: on an unknown option value or an out-of-range number.
  """
  opts = conventions.resolve(
      "fedyogi", convention, b1=b1, b2=b2, tau=tau,
      bias_correction=bias_correction, tau_placement=tau_placement,
      initial_v=initial_v)

  def update_nu(g, v):
    g2 = optax.tree.mul(g, g)
    return jax.tree.map(lambda v, s: v - (1.0 - opts.b2) * s * jnp.sign(v - s),
                        v, g2)

  return _scale_by_adaptive(FedYogiState, update_nu, True, opts)


def scale_by_fedadagrad(
    b1: float | None = None,
    tau: float | None = None,
    *,
    convention: str = DEFAULT_CONVENTION,
    bias_correction: str | None = None,
    tau_placement: str | None = None,
    initial_v: float | None = None,
) -> optax.GradientTransformation:
  """Rescales Δ by the FedAdagrad rule ``v ← v + Δ²`` (no η).

  Bias correction, when on, corrects ``m`` only (``v`` is a sum, not a moving
  average), so ``tau_placement`` has no effect here.

  Args:
    b1, tau, convention, bias_correction, tau_placement, initial_v: the
      shared FedOpt options, see :mod:`fedjax_mm.server.conventions`.

  Returns:
    A transform with state :class:`FedAdagradState`.

  Raises:
    ValueError: on an unknown option value or an out-of-range number.
  """
  opts = conventions.resolve(
      "fedadagrad", convention, b1=b1, tau=tau,
      bias_correction=bias_correction, tau_placement=tau_placement,
      initial_v=initial_v)
  update_nu = lambda g, v: optax.tree.add(v, optax.tree.mul(g, g))
  return _scale_by_adaptive(FedAdagradState, update_nu, False, opts)
