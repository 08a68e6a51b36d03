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

This module holds the named optimizers and their registry lines (``PARTS``); the
adaptive directions (``scale_by_fedadam``, ...) live in
:mod:`fedjax_mm.server.adaptive` and are re-exported here. The adaptive rules,
their options (``b1``, ``b2``, ``tau``, ``convention``, ``bias_correction``,
``tau_placement``, ``initial_v``, shared by every adaptive function) and the
presets that reproduce the paper, Flower (current and legacy strategy APIs),
optax and TFF are documented once, in :mod:`fedjax_mm.server.conventions`.
Every such option defaults to ``None``: "the convention's value".

References:
  Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295.
  Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification", 2019, arXiv:1909.06335 (FedAvgM).
  McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017, arXiv:1602.05629 (FedAvg).
"""

from __future__ import annotations

import optax

from fedjax_mm.registry import Part
from fedjax_mm.server import conventions
from fedjax_mm.server.orthogonal_momentum import orthogonal_momentum
# Re-exported: the config layer, the driver and the tests read them from here.
from fedjax_mm.server.adaptive import FedAdagradState  # noqa: F401
from fedjax_mm.server.adaptive import FedAdamState  # noqa: F401
from fedjax_mm.server.adaptive import FedYogiState  # noqa: F401
from fedjax_mm.server.adaptive import scale_by_fedadagrad
from fedjax_mm.server.adaptive import scale_by_fedadam
from fedjax_mm.server.adaptive import scale_by_fedyogi
from fedjax_mm.server.conventions import BIAS_CORRECTIONS  # noqa: F401
from fedjax_mm.server.conventions import CONVENTIONS
from fedjax_mm.server.conventions import DEFAULT_CONVENTION
from fedjax_mm.server.conventions import TAU_PLACEMENTS  # noqa: F401



def fedavg(learning_rate: optax.ScalarOrSchedule = 1.0
          ) -> optax.GradientTransformation:
  """FedAvg's server step ``x ← x - η·Δ`` (η = 1 is plain averaging).

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round.

  Returns:
    ``optax.sgd(learning_rate)``.
  """
  return optax.sgd(learning_rate)


def fedavgm(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
            nesterov: bool = False) -> optax.GradientTransformation:
  """FedAvg with server momentum: ``m ← μ·m + Δ; x ← x - η·m``.

  With ``m`` starting at 0 the first step is ``x - η·Δ``, which is exactly
  Flower's ``FedAvgM`` strategy (its momentum vector starts at Δ on round 1).
  Flower has no Nesterov variant; ``nesterov=True`` follows optax/PyTorch
  (``x ← x - η·(Δ + μ·m)``).

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round.
    momentum: μ in [0, 1).
    nesterov: use Nesterov momentum.

  Returns:
    ``optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)``.

  Raises:
    ValueError: if ``momentum`` is outside [0, 1).
  """
  conventions.check_unit_interval("momentum", float(momentum))
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def fedadam(learning_rate: optax.ScalarOrSchedule, b1: float | None = None,
            b2: float | None = None, tau: float | None = None, *,
            convention: str = DEFAULT_CONVENTION,
            bias_correction: str | None = None,
            tau_placement: str | None = None,
            initial_v: float | None = None) -> optax.GradientTransformation:
  """FedAdam server optimizer: :func:`scale_by_fedadam` then ``-η``.

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round
      (Flower's default is 0.1).
    b1, b2, tau, convention, bias_correction, tau_placement, initial_v: the
      shared FedOpt options, see :mod:`fedjax_mm.server.conventions`.

  Returns:
    The chained transform.
  """
  return optax.chain(
      scale_by_fedadam(b1, b2, tau, convention=convention,
                       bias_correction=bias_correction,
                       tau_placement=tau_placement, initial_v=initial_v),
      optax.scale_by_learning_rate(learning_rate))


def fedyogi(learning_rate: optax.ScalarOrSchedule, b1: float | None = None,
            b2: float | None = None, tau: float | None = None, *,
            convention: str = DEFAULT_CONVENTION,
            bias_correction: str | None = None,
            tau_placement: str | None = None,
            initial_v: float | None = None) -> optax.GradientTransformation:
  """FedYogi server optimizer: :func:`scale_by_fedyogi` then ``-η``.

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round
      (Flower's default is 0.01).
    b1, b2, tau, convention, bias_correction, tau_placement, initial_v: the
      shared FedOpt options, see :mod:`fedjax_mm.server.conventions`.

  Returns:
    The chained transform.
  """
  return optax.chain(
      scale_by_fedyogi(b1, b2, tau, convention=convention,
                       bias_correction=bias_correction,
                       tau_placement=tau_placement, initial_v=initial_v),
      optax.scale_by_learning_rate(learning_rate))


def fedadagrad(learning_rate: optax.ScalarOrSchedule, b1: float | None = None,
               tau: float | None = None, *,
               convention: str = DEFAULT_CONVENTION,
               bias_correction: str | None = None,
               tau_placement: str | None = None,
               initial_v: float | None = None) -> optax.GradientTransformation:
  """FedAdagrad server optimizer: :func:`scale_by_fedadagrad` then ``-η``.

  Args:
    learning_rate: server learning rate η, a float or a schedule of the round
      (Flower's default is 0.1).
    b1, tau, convention, bias_correction, tau_placement, initial_v: the
      shared FedOpt options, see :mod:`fedjax_mm.server.conventions`.

  Returns:
    The chained transform.
  """
  return optax.chain(
      scale_by_fedadagrad(b1, tau, convention=convention,
                          bias_correction=bias_correction,
                          tau_placement=tau_placement, initial_v=initial_v),
      optax.scale_by_learning_rate(learning_rate))


# The server learning rate (a float or a schedule of the round) comes from the
# run (``config.server.learning_rate`` and its schedule), not from a part's options.
_LR = ("learning_rate",)
PARTS = (
    Part("fedavg", fedavg, "FedAvg", "x <- x - lr * mean delta (McMahan et al., 2017)",
         context=_LR),
    Part("fedavgm", fedavgm, "FedAvgM", "server heavy-ball momentum (Hsu et al., 2019)",
         context=_LR),
    Part("fedadam", fedadam, "FedAdam", "adaptive server step (Reddi et al., ICLR 2021)",
         context=_LR),
    Part("fedyogi", fedyogi, "FedYogi", "Yogi's additive second moment (Reddi et al., 2021)",
         context=_LR),
    Part("fedadagrad", fedadagrad, "FedAdagrad", "accumulated second moment (Reddi et al.)",
         context=_LR),
)
