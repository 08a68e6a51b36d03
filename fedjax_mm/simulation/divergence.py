"""Stopping a diverged run with one line that names what diverged and why.

A run can blow up without a single NaN: a client learning rate of 1e30 gives
losses of 1e31 and an overflowing update norm, a server learning rate of 1e30
moves the parameters to ~1e30 where every later client update is lost below
float precision (update norm 0.0). :func:`check_round` therefore stops a run
on any of

* every client of the round excluded for NaN/Inf (the model cannot move);
* a non-finite training loss, aggregated update norm (``pseudo_gradient_norm``,
  what the server transform received) or server step norm,
  or non-finite global parameters;
* a training loss above ``config.divergence_factor`` (default
  :data:`DEFAULT_FACTOR`) times the run's first positive training loss,

and then names the likely cause from the metrics of the run so far, in order:

1. the clients' own updates are NaN/Inf this round (and no earlier server
   step amplified its input) -> ``client.learning_rate``;
2. some server step was more than :data:`SERVER_GAIN_LIMIT` times the
   aggregated client update it applied (or infinite from a finite one) ->
   ``server.learning_rate``: the clients sent finite updates, the server step
   is what blew up;
3. finite client updates whose aggregate is not finite: with
   ``aggregation.weighting='custom'`` -> the custom weights; otherwise the
   updates are too large to sum -> ``client.learning_rate``;
4. otherwise the loss rose through ordinary-sized server steps on the
   clients' updates -> ``client.learning_rate``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from fedjax_mm import checks
from fedjax_mm.types import PyTree, ServerState

# The loss may rise to this multiple of its first value before the run stops:
# a chance-level classifier's cross-entropy is ln(C) ~ 2.3, and 100x that needs
# logits of ~230 on the wrong class, which ordinary training never reaches.
DEFAULT_FACTOR = 100.0
# An SGD-type server with learning rate <= 1 and momentum <= 0.9 applies at
# most 1 / (1 - 0.9) = 10 times the aggregated update; a larger step is the
# server's own amplification.
SERVER_GAIN_LIMIT = 10.0


def check_factor(value: Any) -> None:
  """Validates ``config.divergence_factor`` (for ``configuration.validate``).

  Raises:
    ValueError: ``"config.divergence_factor: must be a finite number > 1, got <v>"``
      (1 or less would stop a run whose loss merely does not fall; inf never).
  """
  checks.number("config.divergence_factor", value, lambda v: v > 1, "> 1")


class NonFiniteError(RuntimeError):
  """Training diverged: NaN/Inf, or losses/updates beyond the divergence guard."""


def _safe_norm(tree: PyTree) -> jax.Array:
  """L2 norm over a pytree without overflow for finite values (scaled by the max)."""
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  flat = jnp.concatenate(leaves)
  top = jnp.max(jnp.abs(flat))
  scale = jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)
  norm = scale * jnp.sqrt(jnp.sum(jnp.square(flat / scale)))
  return jnp.where(jnp.isfinite(top), norm, top)   # inf or nan passes through


@jax.jit
def server_stats(state: ServerState) -> dict[str, jax.Array]:
  """``params_finite`` and ``server_step_norm`` (norm of the last applied step).

  ``server_step_norm`` is NaN when the state does not track its last update.
  """
  leaves = jax.tree.leaves(state.trainable)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
  tracked = not (isinstance(state.last_update, tuple) and not state.last_update)
  step = _safe_norm(state.last_update) if tracked else jnp.float32(jnp.nan)
  return {"params_finite": finite, "server_step_norm": step}


def _finite(x: Any) -> bool:
  return x is not None and math.isfinite(x)


def _first_loss(history: Sequence[Mapping[str, Any]]) -> float | None:
  # Rounds without trainable rows report a loss of 0: skip them.
  for h in history:
    loss = h.get("train_loss")
    if _finite(loss) and loss > 0:
      return loss
  return None


def _trigger(record, history, params_finite: bool, factor: float, cohort: int) -> str | None:
  """Why the round counts as diverged (None: it does not)."""
  if record.get("num_nonfinite_clients", 0) >= cohort:
    return (f"all {cohort} clients sent NaN/Inf updates and were excluded, so the model "
            "cannot move")
  for key, what in (("train_loss", "training loss"),
                    ("pseudo_gradient_norm", "aggregated update norm")):
    if not _finite(record.get(key, 0.0)):
      return f"{what} is {record.get(key)}"
  # NaN here means "not tracked" (see server_stats); a NaN step shows in the params.
  if math.isinf(record.get("server_step_norm", 0.0)):
    return f"server step norm is {record['server_step_norm']}"
  if not params_finite:
    return "the global parameters hold NaN/Inf"
  first = _first_loss(history)
  if first is not None and record["train_loss"] > factor * first:
    return (f"training loss {record['train_loss']:.3g} exceeds divergence_factor={factor:g} "
            f"x the first training loss {first:.3g}")
  return None


def _server_gain(record: Mapping[str, Any]) -> float | None:
  """Server step / aggregated update of one round (None when undefined)."""
  step, update = record.get("server_step_norm"), record.get("pseudo_gradient_norm")
  if not _finite(update) or update <= 0 or step is None or math.isnan(step):
    return None
  return step / update


def _cause(record, history, config: ml_collections.ConfigDict) -> str:
  """The likely cause, in the order of the module docstring."""
  client = f"lower client.learning_rate (now {config.client.learning_rate})"
  clients_bad = (record.get("num_nonfinite_clients", 0) > 0
                 or not _finite(record.get("mean_client_delta_norm", 0.0)))
  gains = [(h["round"], g) for h in [*history, record]
           if (g := _server_gain(h)) is not None and g > SERVER_GAIN_LIMIT]
  if clients_bad and not [g for g in gains if g[0] < record["round"]]:
    return ("the clients' local training diverged (updates NaN/Inf or too large for a "
            f"float32 norm): {client}")
  if gains:
    r, gain = gains[0]
    return (f"the clients' updates were finite but the server step of round {r} was "
            f"{gain:.3g}x the aggregated update: lower server.learning_rate "
            f"(now {config.server.learning_rate})")
  if not _finite(record.get("pseudo_gradient_norm", 0.0)):
    if config.aggregation.weighting == "custom":
      return (f"finite client updates summed to a non-finite aggregate with the custom "
              f"weights of {config.aggregation.custom_weights_path}: rescale or fix them")
    return f"finite client updates too large to sum in float32: {client}"
  return f"the clients' updates drive the loss up through ordinary server steps: {client}"


def check_round(record: Mapping[str, Any], config: ml_collections.ConfigDict,
                history: Sequence[Mapping[str, Any]] = (), *,
                params_finite: bool = True) -> None:
  """Stops the run when round ``record`` diverged (see the module docstring).

  Args:
    record: the round's metrics (``round``, ``train_loss``,
      ``num_nonfinite_clients``; ``pseudo_gradient_norm``, ``mean_client_delta_norm``,
      ``server_step_norm`` when present).
    config: the run config (``clients_per_round``, the learning rates, the
      weighting; ``divergence_factor`` if set).
    history: the earlier rounds' records of this run.
    params_finite: whether the global parameters after the round are finite.

  Raises:
    NonFiniteError: ``"round <r>: <what diverged>; likely cause: <cause>:
      <what to change>"``, one line.
    ValueError: an invalid ``config.divergence_factor`` (:func:`check_factor`).
  """
  factor = config.get("divergence_factor", DEFAULT_FACTOR)
  check_factor(factor)
  reason = _trigger(record, history, params_finite, factor, config.clients_per_round)
  if reason is not None:
    raise NonFiniteError(f"round {record['round']}: {reason}; likely cause: "
                         f"{_cause(record, history, config)}")
