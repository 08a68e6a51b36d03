"""Server optimizers over the aggregated client pseudo-gradient.

Every client returns ``delta = global_params - local_params``, a pseudo-gradient
with the sign of a gradient. The server reduces the deltas (weighted mean) to
``Δ`` and treats it as the gradient of an ordinary optax optimizer::

  updates, state = tx.update(Δ, state, params)
  params = optax.apply_updates(params, updates)

so FedAvg is ``optax.sgd(1.0)`` (``params ← params - Δ``) and the FedOpt family
(Reddi et al.) is an adaptive optimizer over ``Δ``, one step per round. Each
transform counts its own updates, so a learning-rate schedule and the bias
correction are indexed by round.

The adaptive rules (Reddi et al., Algorithm 2, in our sign convention)::

  m ← β1·m + (1 - β1)·Δ
  FedAdagrad: v ← v + Δ²
  FedAdam:    v ← β2·v + (1 - β2)·Δ²
  FedYogi:    v ← v - (1 - β2)·Δ²·sign(v - Δ²)
  x ← x - η·m / (√v + τ)

Published implementations disagree on details the paper leaves open; each is a
named option here, and ``convention`` picks a preset of all of them:

* ``bias_correction``: ``"none"`` (paper), ``"from_one"`` (optax/TFF: exponent
  ``t`` = update count, 1 on the first update) or ``"from_two"`` (Flower's
  FedAdam: exponent ``server_round + 1`` with ``server_round`` starting at 1).
  For FedAdagrad only ``m`` is corrected: its ``v`` is a running sum, not a
  moving average, so it carries no initialization bias.
* ``tau_placement``: ``"corrected"`` (optax: ``m̂ / (√v̂ + τ)``) or
  ``"uncorrected"`` (Flower/TFF: ``η·√(1-β2^t)/(1-β1^t) · m / (√v + τ)``). The
  two only differ when bias correction is on.
* ``initial_v``: the starting second moment (paper ``τ²``; Flower, optax.adam
  and TFF adam ``0``; optax/TFF yogi ``1e-6``; optax/TFF adagrad ``0.1``).
  ``m`` always starts at 0.

Presets (``b1``/``b2``/``tau`` are the preset's defaults; any explicit argument
overrides its preset value; "-" means unused)::

  convention rule       b1  b2    tau  bias_correction  tau_placement v0
  reddi      all three  0.9 0.99  1e-3 none             -             tau**2
  flower     fedadam    0.9 0.99  1e-9 from_two         uncorrected   0
  flower     fedyogi    0.9 0.99  1e-3 none             -             0
  flower     fedadagrad 0.0 -     1e-9 none             -             0
  optax      fedadam    0.9 0.999 1e-8 from_one         corrected     0
  optax      fedyogi    0.9 0.999 1e-3 from_one         corrected     1e-6
  optax      fedadagrad 0.0 -     1e-7 from_one (no-op) -             0.1
  tff        fedadam    0.9 0.999 1e-7 from_one         uncorrected   0
  tff        fedyogi    0.9 0.999 1e-3 from_one         uncorrected   1e-6
  tff        fedadagrad 0.0 -     1e-7 from_one (no-op) -             0.1

What each preset reproduces (given the same ``η``):

* ``"reddi"``: the paper's Algorithm 2 with its ``v0 = τ²`` initialization, no
  bias correction and its β's; τ = 1e-3 is a typical value from its grid.
* ``"flower"``: Flower's ``FedAdam``, ``FedYogi`` and ``FedAdagrad`` strategies
  exactly (``flwr.server.strategy`` and ``flwr.serverapp.strategy``): zero
  moments, Flower's default β's/τ, FedAdam's ``eta_norm`` bias correction with
  exponent ``server_round + 1``, and FedAdagrad's hard-wired ``beta_1 = 0``
  (``m = Δ``). Flower's default server learning rates, which you pass as
  ``learning_rate``, are 0.1 (FedAdam, FedAdagrad) and 0.01 (FedYogi). This
  assumes every round applies an update (Flower's round counter also advances
  on a round whose aggregation failed; ours counts applied updates).
* ``"optax"``: ``optax.adam``; ``optax.yogi`` except that optax also starts
  ``m`` at 1e-6; ``optax.adagrad`` except that optax adds ε inside the root
  (``Δ/√(v+ε)``), a relative difference below 1e-6 with ``v0 = 0.1``. (We
  compute ``1 - β^t`` without f32 cancellation, so early rounds can differ
  from optax's f32 arithmetic by ~1e-5 relative, in our favour.)
* ``"tff"``: ``tff.learning.optimizers.build_adam`` and ``build_yogi`` exactly;
  ``build_adagrad`` up to the same ε-inside-the-root difference as optax.

The default preset is ``"reddi"``: the optimizers are named after that paper
and this is its Algorithm 2 as published, it is framework-neutral, and its
``v0 = τ²`` keeps the first steps bounded without any bias correction: the
first FedAdam step is ``η·0.1Δ/(√(0.99τ² + 0.01Δ²) + τ)``, close to
``η·sign(Δ)`` where ``|Δ| ≫ 10τ`` and damped where Δ is at noise level,
whereas Flower's first step is ``0.74·η·sign(Δ)`` and optax's ``η·sign(Δ)``
on every coordinate, however small its Δ.

References:
  Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295.
  Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification", 2019, arXiv:1909.06335 (FedAvgM).
"""

from __future__ import annotations

import math
import types
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
CONVENTIONS = ("reddi", "flower", "optax", "tff")
BIAS_CORRECTIONS = ("none", "from_one", "from_two")
TAU_PLACEMENTS = ("corrected", "uncorrected")
DEFAULT_CONVENTION = "reddi"


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


class _Options(NamedTuple):
  """Fully resolved hyperparameters of one adaptive rule."""

  b1: float
  b2: float
  tau: float
  bias_correction: str
  tau_placement: str
  initial_v: float | None  # None: τ² of the resolved τ (the paper's choice).


# Read-only tables: (convention, rule) -> preset. b2 is unused by fedadagrad.
_PRESETS: Mapping[tuple[str, str], _Options] = types.MappingProxyType({
    ("reddi", "fedadam"): _Options(0.9, 0.99, 1e-3, "none", "uncorrected",
                                   None),
    ("reddi", "fedyogi"): _Options(0.9, 0.99, 1e-3, "none", "uncorrected",
                                   None),
    ("reddi", "fedadagrad"): _Options(0.9, 0.99, 1e-3, "none", "uncorrected",
                                      None),
    ("flower", "fedadam"): _Options(0.9, 0.99, 1e-9, "from_two", "uncorrected",
                                    0.0),
    ("flower", "fedyogi"): _Options(0.9, 0.99, 1e-3, "none", "uncorrected",
                                    0.0),
    ("flower", "fedadagrad"): _Options(0.0, 0.99, 1e-9, "none", "uncorrected",
                                       0.0),
    ("optax", "fedadam"): _Options(0.9, 0.999, 1e-8, "from_one", "corrected",
                                   0.0),
    ("optax", "fedyogi"): _Options(0.9, 0.999, 1e-3, "from_one", "corrected",
                                   1e-6),
    ("optax", "fedadagrad"): _Options(0.0, 0.99, 1e-7, "from_one", "corrected",
                                      0.1),
    ("tff", "fedadam"): _Options(0.9, 0.999, 1e-7, "from_one", "uncorrected",
                                 0.0),
    ("tff", "fedyogi"): _Options(0.9, 0.999, 1e-3, "from_one", "uncorrected",
                                 1e-6),
    ("tff", "fedadagrad"): _Options(0.0, 0.99, 1e-7, "from_one", "uncorrected",
                                    0.1),
})


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_unit_interval(name: str, value: float) -> None:
  # β = 1 freezes the moment at its initial value; reject it like optax/TFF.
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
  if not value >= 0.0:  # Also rejects NaN.
    raise ValueError(f"{name} must be a non-negative float, got {value!r}")


def _resolve(rule: str, convention: str, b1: float | None, b2: float | None,
             tau: float | None, bias_correction: str | None,
             tau_placement: str | None, initial_v: float | None) -> _Options:
  """Fills unset options from the preset, then validates the result."""
  _check_choice("convention", convention, CONVENTIONS)
  preset = _PRESETS[(convention, rule)]
  opts = _Options(
      b1=preset.b1 if b1 is None else float(b1),
      b2=preset.b2 if b2 is None else float(b2),
      tau=preset.tau if tau is None else float(tau),
      bias_correction=(preset.bias_correction if bias_correction is None
                       else bias_correction),
      tau_placement=(preset.tau_placement if tau_placement is None
                     else tau_placement),
      initial_v=preset.initial_v if initial_v is None else float(initial_v),
  )
  _check_choice("bias_correction", opts.bias_correction, BIAS_CORRECTIONS)
  _check_choice("tau_placement", opts.tau_placement, TAU_PLACEMENTS)
  _check_unit_interval("b1", opts.b1)
  _check_unit_interval("b2", opts.b2)
  _check_non_negative("tau", opts.tau)
  if opts.initial_v is None:
    opts = opts._replace(initial_v=opts.tau**2)
  _check_non_negative("initial_v", opts.initial_v)
  if opts.tau == 0.0 and opts.initial_v == 0.0:
    # A coordinate whose Δ is always 0 (e.g. a frozen leaf) would get 0/0.
    raise ValueError("tau and initial_v must not both be 0 (0/0 on "
                     "coordinates whose Δ is 0)")
  return opts


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
    opts: _Options,
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
  """Rescales Δ by the FedAdam rule (direction only, no learning rate).

  ``v ← β2·v + (1 - β2)·Δ²``; see the module docstring for the options.

  References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    arXiv:2003.00295, Algorithm 2.

  Args:
    b1: first-moment decay; ``None`` takes the preset's.
    b2: second-moment decay; ``None`` takes the preset's.
    tau: adaptivity constant τ; ``None`` takes the preset's.
    convention: preset, one of ``CONVENTIONS``.
    bias_correction: one of ``BIAS_CORRECTIONS``; ``None`` takes the preset's.
    tau_placement: one of ``TAU_PLACEMENTS``; ``None`` takes the preset's.
    initial_v: starting second moment; ``None`` takes the preset's.

  Returns:
    A transform with state :class:`FedAdamState`.

  Raises:
    ValueError: on an unknown option value or an out-of-range number.
  """
  opts = _resolve("fedadam", convention, b1, b2, tau, bias_correction,
                  tau_placement, initial_v)
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
  """Rescales Δ by the FedYogi rule (direction only, no learning rate).

  ``v ← v - (1 - β2)·Δ²·sign(v - Δ²)``: v moves towards Δ² by an additive
  step, so it cannot collapse after one large Δ as Adam's average can.

  References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    arXiv:2003.00295, Algorithm 2.

  Args:
    b1: first-moment decay; ``None`` takes the preset's.
    b2: second-moment rate; ``None`` takes the preset's.
    tau: adaptivity constant τ; ``None`` takes the preset's.
    convention: preset, one of ``CONVENTIONS``.
    bias_correction: one of ``BIAS_CORRECTIONS``; ``None`` takes the preset's.
    tau_placement: one of ``TAU_PLACEMENTS``; ``None`` takes the preset's.
    initial_v: starting second moment; ``None`` takes the preset's.

  Returns:
    A transform with state :class:`FedYogiState`.

  Raises:
    ValueError: on an unknown option value or an out-of-range number.
  """
  opts = _resolve("fedyogi", convention, b1, b2, tau, bias_correction,
                  tau_placement, initial_v)

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
  """Rescales Δ by the FedAdagrad rule (direction only, no learning rate).

  ``v ← v + Δ²``. Bias correction, when on, corrects ``m`` only (``v`` is a
  sum, not a moving average), so ``tau_placement`` has no effect here.

  References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    arXiv:2003.00295, Algorithm 2.

  Args:
    b1: first-moment decay (0 gives plain Adagrad, ``m = Δ``); ``None`` takes
      the preset's.
    tau: adaptivity constant τ; ``None`` takes the preset's.
    convention: preset, one of ``CONVENTIONS``.
    bias_correction: one of ``BIAS_CORRECTIONS``; ``None`` takes the preset's.
    tau_placement: one of ``TAU_PLACEMENTS``; ``None`` takes the preset's.
    initial_v: starting second moment; ``None`` takes the preset's.

  Returns:
    A transform with state :class:`FedAdagradState`.

  Raises:
    ValueError: on an unknown option value or an out-of-range number.
  """
  opts = _resolve("fedadagrad", convention, b1, None, tau, bias_correction,
                  tau_placement, initial_v)
  update_nu = lambda g, v: optax.tree.add(v, optax.tree.mul(g, g))
  return _scale_by_adaptive(FedAdagradState, update_nu, False, opts)


def fedavg(learning_rate: optax.ScalarOrSchedule = 1.0
          ) -> optax.GradientTransformation:
  """FedAvg's server step ``x ← x - η·Δ`` (η = 1 is plain averaging).

  References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017, arXiv:1602.05629.

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round.

  Returns:
    ``optax.sgd(learning_rate)``.
  """
  return optax.sgd(learning_rate)


def fedavgm(learning_rate: optax.ScalarOrSchedule, momentum: float,
            nesterov: bool = False) -> optax.GradientTransformation:
  """FedAvg with server momentum: ``m ← μ·m + Δ; x ← x - η·m``.

  With ``m`` starting at 0 the first step is ``x - η·Δ``, which is exactly
  Flower's ``FedAvgM`` strategy (its momentum vector starts at Δ on round 1).
  Flower has no Nesterov variant; ``nesterov=True`` follows optax/PyTorch
  (``x ← x - η·(Δ + μ·m)``).

  References:
    Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019, arXiv:1909.06335.

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round.
    momentum: μ in [0, 1).
    nesterov: use Nesterov momentum.

  Returns:
    ``optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)``.

  Raises:
    ValueError: if ``momentum`` is outside [0, 1).
  """
  _check_unit_interval("momentum", float(momentum))
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def fedadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float | None = None,
    b2: float | None = None,
    tau: float | None = None,
    *,
    convention: str = DEFAULT_CONVENTION,
    bias_correction: str | None = None,
    tau_placement: str | None = None,
    initial_v: float | None = None,
) -> optax.GradientTransformation:
  """FedAdam server optimizer: :func:`scale_by_fedadam` then ``-η``.

  References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    arXiv:2003.00295.

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round
      (Flower's default is 0.1).
    b1: see :func:`scale_by_fedadam`.
    b2: see :func:`scale_by_fedadam`.
    tau: see :func:`scale_by_fedadam`.
    convention: see :func:`scale_by_fedadam`.
    bias_correction: see :func:`scale_by_fedadam`.
    tau_placement: see :func:`scale_by_fedadam`.
    initial_v: see :func:`scale_by_fedadam`.

  Returns:
    The chained transform.
  """
  return optax.chain(
      scale_by_fedadam(b1, b2, tau, convention=convention,
                       bias_correction=bias_correction,
                       tau_placement=tau_placement, initial_v=initial_v),
      optax.scale_by_learning_rate(learning_rate))


def fedyogi(
    learning_rate: optax.ScalarOrSchedule,
    b1: float | None = None,
    b2: float | None = None,
    tau: float | None = None,
    *,
    convention: str = DEFAULT_CONVENTION,
    bias_correction: str | None = None,
    tau_placement: str | None = None,
    initial_v: float | None = None,
) -> optax.GradientTransformation:
  """FedYogi server optimizer: :func:`scale_by_fedyogi` then ``-η``.

  References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    arXiv:2003.00295.

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round
      (Flower's default is 0.01).
    b1: see :func:`scale_by_fedyogi`.
    b2: see :func:`scale_by_fedyogi`.
    tau: see :func:`scale_by_fedyogi`.
    convention: see :func:`scale_by_fedyogi`.
    bias_correction: see :func:`scale_by_fedyogi`.
    tau_placement: see :func:`scale_by_fedyogi`.
    initial_v: see :func:`scale_by_fedyogi`.

  Returns:
    The chained transform.
  """
  return optax.chain(
      scale_by_fedyogi(b1, b2, tau, convention=convention,
                       bias_correction=bias_correction,
                       tau_placement=tau_placement, initial_v=initial_v),
      optax.scale_by_learning_rate(learning_rate))


def fedadagrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: float | None = None,
    tau: float | None = None,
    *,
    convention: str = DEFAULT_CONVENTION,
    bias_correction: str | None = None,
    tau_placement: str | None = None,
    initial_v: float | None = None,
) -> optax.GradientTransformation:
  """FedAdagrad server optimizer: :func:`scale_by_fedadagrad` then ``-η``.

  References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    arXiv:2003.00295.

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round
      (Flower's default is 0.1).
    b1: see :func:`scale_by_fedadagrad`.
    tau: see :func:`scale_by_fedadagrad`.
    convention: see :func:`scale_by_fedadagrad`.
    bias_correction: see :func:`scale_by_fedadagrad`.
    tau_placement: see :func:`scale_by_fedadagrad`.
    initial_v: see :func:`scale_by_fedadagrad`.

  Returns:
    The chained transform.
  """
  return optax.chain(
      scale_by_fedadagrad(b1, tau, convention=convention,
                          bias_correction=bias_correction,
                          tau_placement=tau_placement, initial_v=initial_v),
      optax.scale_by_learning_rate(learning_rate))


def make_server_optimizer(
    name: str,
    *,
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.0,
    nesterov: bool = False,
    b1: float | None = None,
    b2: float | None = None,
    tau: float | None = None,
    convention: str = DEFAULT_CONVENTION,
    bias_correction: str | None = None,
    tau_placement: str | None = None,
    initial_v: float | None = None,
) -> optax.GradientTransformation:
  """Builds a server optimizer by name (the entry point of the config layer).

  ``b1``, ``b2``, ``tau``, ``bias_correction``, ``tau_placement`` and
  ``initial_v`` default to ``None``, meaning "the convention's value" (see the
  module docstring); they are ignored by ``fedavg``/``fedavgm``, and ``b2`` by
  ``fedadagrad``. ``momentum``/``nesterov`` apply to ``fedavgm`` only.

  Args:
    name: one of ``SERVER_OPTIMIZERS``.
    learning_rate: server learning rate η, a float or a schedule of the round.
    momentum: FedAvgM's μ; must stay 0 for ``fedavg``.
    nesterov: FedAvgM's Nesterov flag.
    b1: first-moment decay of the adaptive rules.
    b2: second-moment decay of FedAdam/FedYogi.
    tau: adaptivity constant τ.
    convention: one of ``CONVENTIONS``.
    bias_correction: one of ``BIAS_CORRECTIONS``.
    tau_placement: one of ``TAU_PLACEMENTS``.
    initial_v: starting second moment.

  Returns:
    The optimizer.

  Raises:
    ValueError: on an unknown name or option value.
  """
  if name not in SERVER_OPTIMIZERS:
    raise ValueError(
        f"server optimizer name must be one of {SERVER_OPTIMIZERS}, got "
        f"{name!r}")
  # Validate the preset name even where it is unused, to catch config typos.
  _check_choice("convention", convention, CONVENTIONS)
  if name == "fedavg":
    if momentum != 0.0:
      raise ValueError(f"momentum must be 0 for 'fedavg' (use 'fedavgm'), got "
                       f"{momentum!r}")
    return fedavg(learning_rate)
  if name == "fedavgm":
    return fedavgm(learning_rate, momentum, nesterov)
  options = dict(convention=convention, bias_correction=bias_correction,
                 tau_placement=tau_placement, initial_v=initial_v)
  if name == "fedadam":
    return fedadam(learning_rate, b1, b2, tau, **options)
  if name == "fedyogi":
    return fedyogi(learning_rate, b1, b2, tau, **options)
  return fedadagrad(learning_rate, b1, tau, **options)
