"""The parts a federated algorithm is made of: client work and server work.

A round composes four parts (as TFF's learning-process templates do:
distributor -> client work -> aggregator -> finalizer):

* **client work** (:class:`ClientWork`): how one client trains, given what
  every client shares (:class:`~fedjax_mm.client.LocalContext`: the global
  parameters and the algorithm's broadcast) and its own persistent state; it
  returns a :class:`~fedjax_mm.types.ClientResult` (the delta plus named
  ``extras``), its new state, and per-client metrics. It runs vmapped over a
  chunk of the cohort.
* **preprocessors and an aggregator** (``fedjax_mm.aggregation``): reduce
  the cohort's deltas to one.
* **server work** (:class:`ServerWork`): the algorithm's server-side state,
  what it broadcasts, and how it turns the aggregate (and the summed
  ``extras``) into the pseudo-gradient the server optimizer applies.
* **the server optimizer**: an optax transform (``fedjax_mm.server``).

An algorithm is one file that builds an :class:`Algorithm` from these parts;
``simulation/round.py`` names none of them.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax

from fedjax_mm import client as client_lib
from fedjax_mm.types import ClientResult, PyTree, Task

Metrics = Mapping[str, jax.Array]
# LocalContext, the client's state -> the correction hook of its local steps.
MakeCorrection = Callable[[client_lib.LocalContext, PyTree], client_lib.GradCorrection]


class ClientWork(NamedTuple):
  """How one client trains in a round.

  Attributes:
    init_state: ``trainable template -> one client's persistent state``
      (``()`` when the algorithm keeps none); stored for the whole
      population as ``[K, ...]`` and gathered chunk by chunk.
    update: ``(ctx, slot, state) -> (result, new_state, metrics)``; ``metrics``
      are per-client scalars, reported as their mean over the clients whose
      update counted. A result with NaN/Inf anywhere (delta or extras) is
      excluded by the round and the client's state is left unchanged.
  """

  init_state: Callable[[PyTree], PyTree]
  update: Callable[[client_lib.LocalContext, client_lib.ClientSlot, PyTree],
                   tuple[ClientResult, PyTree, Metrics]]


class Aggregates(NamedTuple):
  """What the server work receives after aggregation.

  Attributes:
    delta: the aggregator's output (e.g. the weighted mean delta).
    extras: each named extra upload summed over the counted clients.
    weight_sum: sum of the counted clients' aggregation weights.
    num_counted: clients whose update counted (valid and finite).
    num_clients: K, the population size (static).
    population_weight: the sum of every client's aggregation weight (the
      whole population's, not just the cohort's).
  """

  delta: PyTree
  extras: Mapping[str, PyTree]
  weight_sum: jax.Array
  num_counted: jax.Array
  num_clients: int
  population_weight: jax.Array


class ServerWork(NamedTuple):
  """The algorithm's server side.

  Attributes:
    init: ``trainable -> server algorithm state`` (checkpointed with the run).
    broadcast: ``state -> message`` every client receives (``()`` if none).
    finalize: ``(state, aggregates) -> (pseudo-gradient, new state, metrics)``;
      the pseudo-gradient goes to the server optimizer.
  """

  init: Callable[[PyTree], PyTree]
  broadcast: Callable[[PyTree], PyTree]
  finalize: Callable[[PyTree, Aggregates], tuple[PyTree, PyTree, Metrics]]


class Algorithm(NamedTuple):
  """A federated algorithm: a name, its client work and its server work.

  ``requires`` names the optional :class:`~fedjax_mm.types.Task` hooks the
  algorithm reads (e.g. ``("linear_inputs",)``); building a round on a task
  without one is refused (:func:`check_task_hooks`).
  """

  name: str
  client: ClientWork
  server: ServerWork
  requires: tuple[str, ...] = ()


def check_task_hooks(algorithm: Algorithm, task: Task) -> None:
  """Refuses a task that lacks a hook the algorithm requires.

  Raises:
    ValueError: ``"algorithm: <name> needs the task hook Task.<hook>, which
      this task does not define; ..."``.
  """
  for hook in algorithm.requires:
    if getattr(task, hook, None) is None:
      raise ValueError(f"algorithm: {algorithm.name} needs the task hook Task.{hook}, which "
                       "this task does not define; use a task that implements it (the "
                       "logistic-regression and Fed-MA tasks do) or another algorithm")


def no_state(_: PyTree) -> tuple:
  return ()


SGD_CLIENTS = ("sgd", "momentum")


def require_sgd_clients(algorithm: str, client_optimizer: str, why: str) -> None:
  """Refuses a client optimizer other than (momentum) SGD for an algorithm that needs it.

  Raises:
    ValueError: ``"client_optimizer: <algorithm> <why>; it needs ('sgd',
      'momentum') clients, got <name>"``.
  """
  if client_optimizer not in SGD_CLIENTS:
    raise ValueError(f"client_optimizer: {algorithm} {why}; it needs {SGD_CLIENTS} clients, "
                     f"got {client_optimizer!r}")


def stateless_server() -> ServerWork:
  """Server work that passes the aggregate through (FedAvg, FedProx)."""
  return ServerWork(init=no_state, broadcast=lambda state: state,
                    finalize=lambda state, agg: (agg.delta, state, {}))


def local_training(make_correction: MakeCorrection | None = None) -> ClientWork:
  """Client work of local training with an optional gradient correction.

  Args:
    make_correction: ``(ctx, state) -> correction(grads, params) -> grads``,
      built once per client (it may close over the broadcast, the global
      parameters and the client's state). None: plain local training.

  Returns:
    Stateless :class:`ClientWork` uploading ``delta = global - local``.
  """

  def update(ctx: client_lib.LocalContext, slot: client_lib.ClientSlot, state: PyTree):
    correction = None if make_correction is None else make_correction(ctx, state)
    carry = client_lib.local_steps(ctx, slot, correction)
    return client_lib.client_final(ctx.trainable, carry, slot.size, slot.weight), state, {}

  return ClientWork(init_state=no_state, update=update)
