"""The FedOpt options, their presets (``convention``) and how they resolve.

The adaptive rules (Reddi et al., Algorithm 2, in our sign convention: ``Δ``
is the mean client ``delta = global - local``, with the sign of a gradient)::

  m ← β1·m + (1 - β1)·Δ
  FedAdagrad: v ← v + Δ²
  FedAdam:    v ← β2·v + (1 - β2)·Δ²
  FedYogi:    v ← v - (1 - β2)·Δ²·sign(v - Δ²)
  x ← x - η·m / (√v + τ)

Published implementations disagree on details the paper leaves open; each is
a named option here, and ``convention`` picks a preset of all of them.

Arguments shared by every adaptive function of :mod:`fedjax_mm.server.fedopt`
(``scale_by_fedadam``, ``fedadam``, ..., ``make_server_optimizer``); each
defaults to ``None``, meaning "the preset's value", and an explicit value
overrides the preset:

* ``b1``: first-moment decay β1 in [0, 1) (0 gives ``m = Δ``).
* ``b2``: second-moment decay (FedAdam) or rate (FedYogi) β2 in [0, 1);
  FedAdagrad has none.
* ``tau``: adaptivity constant τ >= 0.
* ``convention``: the preset, one of :data:`CONVENTIONS` (default
  :data:`DEFAULT_CONVENTION`; never ``None``).
* ``bias_correction``: one of :data:`BIAS_CORRECTIONS`: ``"none"`` (paper),
  ``"from_one"`` (optax/TFF: exponent ``t`` = update count, 1 on the first
  update) or ``"from_two"`` (Flower's FedAdam: exponent ``server_round + 1``
  with ``server_round`` starting at 1). For FedAdagrad only ``m`` is
  corrected: its ``v`` is a running sum, not a moving average, so it carries
  no initialization bias.
* ``tau_placement``: one of :data:`TAU_PLACEMENTS`: ``"corrected"`` (optax:
  ``m̂ / (√v̂ + τ)``) or ``"uncorrected"`` (Flower/TFF:
  ``η·√(1-β2^t)/(1-β1^t) · m / (√v + τ)``). The two only differ when bias
  correction is on, and never for FedAdagrad.
* ``initial_v``: the starting second moment v0 >= 0 (paper ``τ²``; Flower,
  optax.adam and TFF adam ``0``; optax/TFF yogi ``1e-6``; optax/TFF adagrad
  ``0.1``). ``m`` always starts at 0. ``tau`` and ``initial_v`` must not
  both be 0 (a coordinate whose Δ is always 0 would get 0/0).

Presets ("-" means unused)::

  convention    rule       b1  b2    tau  bias_correction  tau_placement v0
  reddi         all three  0.9 0.99  1e-3 none             -             tau**2
  flower        fedadam    0.9 0.99  1e-3 from_two         uncorrected   0
  flower        fedyogi    0.9 0.99  1e-3 none             -             0
  flower        fedadagrad 0.0 -     1e-3 none             -             0
  flower_legacy fedadam    0.9 0.99  1e-9 from_two         uncorrected   0
  flower_legacy fedyogi    0.9 0.99  1e-3 none             -             0
  flower_legacy fedadagrad 0.0 -     1e-9 none             -             0
  optax         fedadam    0.9 0.999 1e-8 from_one         corrected     0
  optax         fedyogi    0.9 0.999 1e-3 from_one         corrected     1e-6
  optax         fedadagrad 0.0 -     1e-7 from_one (no-op) -             0.1
  tff           fedadam    0.9 0.999 1e-7 from_one         uncorrected   0
  tff           fedyogi    0.9 0.999 1e-3 from_one         uncorrected   1e-6
  tff           fedadagrad 0.0 -     1e-7 from_one (no-op) -             0.1

What each preset reproduces (given the same ``η``):

* ``"reddi"``: the paper's Algorithm 2 with its ``v0 = τ²`` initialization,
  no bias correction and its β's; τ = 1e-3 is a typical value from its grid.
* ``"flower"``: the ``FedAdam``, ``FedYogi`` and ``FedAdagrad`` strategies of
  Flower's current Message API, ``flwr.serverapp.strategy`` (a ``ServerApp``
  calling ``strategy.start``): τ = 1e-3 for all three.
* ``"flower_legacy"``: the same strategies of Flower's legacy API,
  ``flwr.server.strategy`` (used with ``start_server`` or
  ``ServerAppComponents``):
  τ = 1e-9 for FedAdam and FedAdagrad, 1e-3 for FedYogi. The two Flower APIs
  differ only in these default τ's.

  Both Flower presets: zero moments, Flower's default β's, FedAdam's
  ``eta_norm`` bias correction with exponent ``server_round + 1``, and
  FedAdagrad's hard-wired ``beta_1 = 0`` (``m = Δ``). Flower's default server
  learning rates, which you pass as ``learning_rate``, are 0.1 (FedAdam,
  FedAdagrad) and 0.01 (FedYogi). They assume every round applies an update
  (Flower's round counter also advances on a round whose aggregation failed;
  ours counts applied updates).
* ``"optax"``: ``optax.adam``; ``optax.yogi`` except that optax also starts
  ``m`` at 1e-6; ``optax.adagrad`` except that optax adds ε inside the root
  (``Δ/√(v+ε)``), a relative difference below 1e-6 with ``v0 = 0.1``. (We
  compute ``1 - β^t`` without f32 cancellation, so early rounds can differ
  from optax's f32 arithmetic by ~1e-5 relative, in our favour.)
* ``"tff"``: ``tff.learning.optimizers.build_adam`` and ``build_yogi``
  exactly; ``build_adagrad`` up to the same ε-inside-the-root difference as
  optax.

The default preset is ``"reddi"``: the optimizers are named after that paper
and this is its Algorithm 2 as published, it is framework-neutral, and its
``v0 = τ²`` keeps the first steps bounded without any bias correction: the
first FedAdam step is ``η·0.1Δ/(√(0.99τ² + 0.01Δ²) + τ)``, close to
``η·sign(Δ)`` where ``|Δ| ≫ 10τ`` and damped where Δ is at noise level,
whereas Flower's first step is at most ``0.74·η·sign(Δ)`` and optax's
``η·sign(Δ)`` on every coordinate, however small its Δ.

References:
  Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295.
  Flower strategies: flwr.serverapp.strategy.{FedAdam,FedYogi,FedAdagrad}
  and flwr.server.strategy.{FedAdam,FedYogi,FedAdagrad} (Flower 1.x).
"""

from __future__ import annotations

import types
from typing import Mapping, NamedTuple

from fedjax_mm import checks

RULES = ("fedadam", "fedyogi", "fedadagrad")
CONVENTIONS = ("reddi", "flower", "flower_legacy", "optax", "tff")
BIAS_CORRECTIONS = ("none", "from_one", "from_two")
TAU_PLACEMENTS = ("corrected", "uncorrected")
DEFAULT_CONVENTION = "reddi"


class Options(NamedTuple):
  """Fully resolved hyperparameters of one adaptive rule (see module doc)."""

  b1: float
  b2: float  # Unused by fedadagrad.
  tau: float
  bias_correction: str
  tau_placement: str
  initial_v: float | None  # None in a preset: τ² of the resolved τ.


# Read-only: (convention, rule) -> preset, the module docstring's table. b2 is
# a placeholder for fedadagrad, which has none.
PRESETS: Mapping[tuple[str, str], Options] = types.MappingProxyType({
    ("reddi", "fedadam"): Options(0.9, 0.99, 1e-3, "none", "uncorrected", None),
    ("reddi", "fedyogi"): Options(0.9, 0.99, 1e-3, "none", "uncorrected", None),
    ("reddi", "fedadagrad"): Options(0.9, 0.99, 1e-3, "none", "uncorrected",
                                     None),
    # flwr.serverapp.strategy (the Message API): tau = 1e-3 throughout.
    ("flower", "fedadam"): Options(0.9, 0.99, 1e-3, "from_two", "uncorrected",
                                   0.0),
    ("flower", "fedyogi"): Options(0.9, 0.99, 1e-3, "none", "uncorrected", 0.0),
    ("flower", "fedadagrad"): Options(0.0, 0.99, 1e-3, "none", "uncorrected",
                                      0.0),
    # flwr.server.strategy (legacy): tau = 1e-9 except FedYogi's 1e-3.
    ("flower_legacy", "fedadam"): Options(0.9, 0.99, 1e-9, "from_two",
                                          "uncorrected", 0.0),
    ("flower_legacy", "fedyogi"): Options(0.9, 0.99, 1e-3, "none",
                                          "uncorrected", 0.0),
    ("flower_legacy", "fedadagrad"): Options(0.0, 0.99, 1e-9, "none",
                                             "uncorrected", 0.0),
    ("optax", "fedadam"): Options(0.9, 0.999, 1e-8, "from_one", "corrected",
                                  0.0),
    ("optax", "fedyogi"): Options(0.9, 0.999, 1e-3, "from_one", "corrected",
                                  1e-6),
    ("optax", "fedadagrad"): Options(0.0, 0.99, 1e-7, "from_one", "corrected",
                                     0.1),
    ("tff", "fedadam"): Options(0.9, 0.999, 1e-7, "from_one", "uncorrected",
                                0.0),
    ("tff", "fedyogi"): Options(0.9, 0.999, 1e-3, "from_one", "uncorrected",
                                1e-6),
    ("tff", "fedadagrad"): Options(0.0, 0.99, 1e-7, "from_one", "uncorrected",
                                   0.1),
})


def check_unit_interval(name: str, value: float) -> None:
  """Checks a decay or momentum: in [0, 1).

  β = 1 would freeze the moment at its initial value; optax and TFF reject it
  too.

  Args:
    name: the argument's name, for the message.
    value: the given value.

  Raises:
    ValueError: naming ``name``, the range and ``value``.
  """
  checks.number(name, value, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def resolve(
    rule: str,
    convention: str,
    *,
    b1: float | None = None,
    b2: float | None = None,
    tau: float | None = None,
    bias_correction: str | None = None,
    tau_placement: str | None = None,
    initial_v: float | None = None,
) -> Options:
  """Fills the unset options from the preset, then validates the result.

  Args:
    rule: one of :data:`RULES`.
    convention: one of :data:`CONVENTIONS`.
    b1: see the module docstring; likewise the other options.
    b2: second-moment decay; ignored by ``fedadagrad``.
    tau: adaptivity constant.
    bias_correction: one of :data:`BIAS_CORRECTIONS`.
    tau_placement: one of :data:`TAU_PLACEMENTS`.
    initial_v: starting second moment.

  Returns:
    The resolved options (``initial_v`` never ``None``).

  Raises:
    ValueError: on an unknown option value, an out-of-range number, or
      ``tau`` and ``initial_v`` both 0.
  """
  checks.one_of("rule", rule, RULES)
  checks.one_of("convention", convention, CONVENTIONS)
  preset = PRESETS[(convention, rule)]
  opts = Options(
      b1=preset.b1 if b1 is None else float(b1),
      b2=preset.b2 if b2 is None else float(b2),
      tau=preset.tau if tau is None else float(tau),
      bias_correction=(preset.bias_correction if bias_correction is None
                       else bias_correction),
      tau_placement=(preset.tau_placement if tau_placement is None
                     else tau_placement),
      initial_v=preset.initial_v if initial_v is None else float(initial_v),
  )
  checks.one_of("bias_correction", opts.bias_correction, BIAS_CORRECTIONS)
  checks.one_of("tau_placement", opts.tau_placement, TAU_PLACEMENTS)
  check_unit_interval("b1", opts.b1)
  check_unit_interval("b2", opts.b2)
  checks.number("tau", opts.tau, lambda v: v >= 0.0, ">= 0")
  if opts.initial_v is None:
    opts = opts._replace(initial_v=opts.tau**2)
  checks.number("initial_v", opts.initial_v, lambda v: v >= 0.0, ">= 0")
  if opts.tau == 0.0 and opts.initial_v == 0.0:
    # A coordinate whose Δ is always 0 (e.g. a frozen leaf) would get 0/0.
    raise ValueError("tau and initial_v must not both be 0 (0/0 on "
                     "coordinates whose Δ is 0)")
  return opts
