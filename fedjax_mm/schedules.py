"""Learning-rate schedules indexed by round, built from config values.

Server transforms count one update per round, so an optax schedule handed to
them is indexed by round. Client optimizers restart every round, so the
round function evaluates the client schedule at ``state.round`` itself.
"""

from __future__ import annotations

import optax

SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential", "step")


def make_schedule(name: str, init_value: float, *, num_rounds: int,
                  warmup_rounds: int = 0, decay_rate: float = 0.1,
                  end_value: float = 0.0, step_rounds: int = 0) -> optax.Schedule:
  """A schedule over rounds.

  Args:
    name: one of ``SCHEDULES``. ``"cosine"`` decays to ``end_value`` over
      ``num_rounds``; ``"warmup_cosine"`` first ramps linearly from 0 over
      ``warmup_rounds``; ``"exponential"`` multiplies by ``decay_rate`` every
      ``num_rounds`` (smoothly); ``"step"`` multiplies by ``decay_rate`` every
      ``step_rounds`` rounds.
    init_value: the peak / initial learning rate.
  """
  if name == "constant":
    return optax.constant_schedule(init_value)
  if name == "cosine":
    return optax.cosine_decay_schedule(init_value, max(num_rounds, 1),
                                       alpha=end_value / init_value if init_value else 0.0)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, init_value, warmup_rounds, max(num_rounds, warmup_rounds + 1), end_value)
  if name == "exponential":
    return optax.exponential_decay(init_value, max(num_rounds, 1), decay_rate)
  if name == "step":
    return optax.exponential_decay(init_value, max(step_rounds, 1), decay_rate,
                                   staircase=True)
  raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
