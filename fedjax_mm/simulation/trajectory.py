"""Diagnostics of the server's trajectory: step cosines, norms, path efficiency.

With ``g_t`` the pseudo-gradient the server transform receives in round
``t`` (the algorithm's finalize output) and ``u_t`` the update it applies
(``W_t = W_{t-1} + u_t``):

* ``pseudo_gradient_cosine = cos(g_t, g_{t-1})``: whether the clients' mean
  direction swings back and forth. The server's own ``update_cosine =
  cos(u_t, u_{t-1})`` cannot say that under heavy-ball momentum: ``u_t =
  beta u_{t-1} - lr g_t`` keeps consecutive updates aligned (~0.9 for
  beta = 0.9) whatever the ``g_t`` do. With FedAvg (``u_t = -g_t``) the two
  cosines are equal.
* ``pseudo_gradient_norm = ||g_t||``, ``update_norm = ||u_t||`` (global L2
  norms over the trainable pytree; 0 for a round that applied nothing).
* path efficiency (the straightness index of a path, displacement over path
  length): ``E_t = ||W_t - W_0|| / L_t`` with ``L_t = sum_{s<=t} ||u_s||``;
  1 for a straight path, towards 0 for an oscillating one (undefined, NaN,
  while nothing moved: ``L_t = 0``).

``L_t`` is carried in ``ServerState.path_length`` (so a resumed run continues
it); ``W_0`` is not carried: the driver keeps the round-0 trainable it built
(deterministic from the config, so a resumed run has the same one) and calls
:func:`path_record` each round.

References:
  Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (the server
  optimizer on the pseudo-gradient, heavy-ball server momentum FedAvgM);
  Benhamou, "How to reliably estimate the tortuosity of an animal's path:
  straightness or sinuosity?", J. Theor. Biol. 229, 2004 (the straightness
  index D / L).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedjax_mm.types import PyTree, ServerState


def tracked(field: Any) -> bool:
  """Whether a ``ServerState`` diagnostic field is kept (``()`` turns it off)."""
  return not (isinstance(field, tuple) and not field)


def cosine(a: PyTree, b: PyTree) -> jax.Array:
  """cos(a, b) over whole pytrees; 0 when either is zero (e.g. the first round)."""
  norms = optax.tree.norm(a) * optax.tree.norm(b)
  return jnp.where(norms > 0, optax.tree.vdot(a, b) / jnp.maximum(norms, 1e-30), 0.0)


def round_diagnostics(state: ServerState, pseudo_gradient: PyTree, updates: PyTree,
                      has_update: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """The round's trajectory metrics and the diagnostic fields of the next state.

  Args:
    state: the server state the round started from (its ``last_update``,
      ``last_pseudo_gradient`` and ``path_length``; each ``()`` = off).
    pseudo_gradient: ``g_t``, what the server transform received.
    updates: ``u_t``, what the transform returned.
    has_update: whether the round applies ``u_t`` (False: the server keeps
      its state, the path does not grow).

  Returns:
    ``(fields, metrics)``: the new ``last_update``, ``last_pseudo_gradient``
    and ``path_length`` (kept as they were without an update; ``()`` stays
    ``()``), and the metrics of the module docstring (the cosines and
    ``path_length`` only for the fields kept).
  """
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(has_update, n, o), new, old)
  update_norm = jnp.where(has_update, optax.tree.norm(updates), 0.0)
  metrics = {"pseudo_gradient_norm": optax.tree.norm(pseudo_gradient),
             "update_norm": update_norm}
  fields = {"last_update": (), "last_pseudo_gradient": (), "path_length": ()}
  if tracked(state.last_update):
    # Negative = the projector swings back (but see the docstring on momentum).
    metrics["update_cosine"] = cosine(updates, state.last_update)
    fields["last_update"] = keep(updates, state.last_update)
  if tracked(state.last_pseudo_gradient):
    metrics["pseudo_gradient_cosine"] = cosine(pseudo_gradient, state.last_pseudo_gradient)
    fields["last_pseudo_gradient"] = keep(pseudo_gradient, state.last_pseudo_gradient)
  if tracked(state.path_length):
    fields["path_length"] = state.path_length + update_norm.astype(jnp.float32)
    metrics["path_length"] = fields["path_length"]
  return fields, metrics


@jax.jit
def path_stats(trainable: PyTree, initial: PyTree, path_length: jax.Array
               ) -> dict[str, jax.Array]:
  """``distance_from_init = ||W_t - W_0||`` and ``path_efficiency = distance / L_t``."""
  distance = optax.tree.norm(jax.tree.map(jnp.subtract, trainable, initial))
  efficiency = jnp.where(path_length > 0, distance / jnp.maximum(path_length, 1e-30), jnp.nan)
  return {"distance_from_init": distance, "path_efficiency": efficiency}


def path_record(state: ServerState, initial: PyTree) -> dict[str, float]:
  """The driver's per-round path metrics (``{}`` when the state keeps no path length).

  Args:
    state: the server state after the round.
    initial: ``W_0``, the run's round-0 trainable parameters.
  """
  if not tracked(state.path_length):
    return {}
  stats = jax.device_get(path_stats(state.trainable, initial, state.path_length))
  return {k: float(v) for k, v in stats.items()}
