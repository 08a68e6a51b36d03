"""Aggregation as stateful, keyed processes over the cohort's uploads.

Two kinds, explicit in the type (the round picks its memory plan from it):

* :class:`StreamingAggregator`: sum-decomposable reductions (mean, clipped
  mean, noised sum). The round feeds it the cohort chunk by chunk, so memory
  is O(chunk x model).
* :class:`CohortAggregator`: reductions that need every update at once
  (median, trimmed mean, Krum, geometric median, Fed-CMP). The round stacks
  the cohort's deltas ``[C, ...]`` for these only, and refuses up front when
  the stack would exceed a memory cap.

Before either, :class:`Preprocessor` steps (clipping; later compression and
local DP noise) run on each client's delta, vmapped, each with its own key.
After, an aggregator may be *wrapped* (``WRAPPERS``: central noise, the
secure sum), which only a sum-decomposable one (``summand`` set) allows.
Aggregator state persists across rounds in ``ServerState.aggregator``.

References:
  The process shape follows TFF's aggregation factories (wrap, then reduce)
  and pfl-research's per-user postprocessors.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import math

import jax
import jax.numpy as jnp

from fedjax_mm.types import PyTree

Metrics = Mapping[str, jax.Array]


class StreamingAggregator(NamedTuple):
  """A sum-decomposable reduction, streamed chunk by chunk.

  Attributes:
    name: prefix of its metrics.
    init: ``template delta -> state`` carried across rounds (``()`` if none).
    start: ``(state, params, key) -> accumulator`` at the round's start;
      ``params`` is the round's global model (the structure of one client's
      delta), ``key`` the round's aggregator key (the one ``finalize`` gets).
    accumulate: ``(acc, deltas [c, ...], weights [c]) -> acc`` once per chunk,
      in slot order; excluded and padding clients arrive with weight 0 and a
      zero delta.
    finalize: ``(state, acc, key) -> (aggregate, new state, metrics)``.
    summand: None, unless the reduction is a sum of per-client terms (it is
      *sum-decomposable*): then ``summand(delta, weight)`` is one client's
      term, ``start`` returns that structure's zeros and ``accumulate`` adds
      the chunk's terms (the contract suite checks it). Secure aggregation
      and central noise wrap only such aggregators; a wrapper keeps its
      inner aggregator's ``summand`` (its inner reduction is still that sum).
  """

  name: str
  init: Callable[[PyTree], PyTree]
  start: Callable[[PyTree, PyTree, jax.Array], PyTree]
  accumulate: Callable[[PyTree, PyTree, jax.Array], PyTree]
  finalize: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, PyTree, Metrics]]
  summand: Callable[[PyTree, jax.Array], PyTree] | None = None


class CohortAggregator(NamedTuple):
  """A reduction over the whole cohort's stacked updates.

  Attributes:
    name: prefix of its metrics.
    init: ``template delta -> state`` carried across rounds (``()`` if none).
    aggregate: ``(state, deltas [C, ...], weights [C], mask [C], key, params)
      -> (aggregate, new state, metrics)``; ``mask`` is False for padding,
      excluded and zero-weight clients, whose rows must not matter;
      ``params`` is the round's global model the deltas are taken from
      (e.g. Fed-CMP's CRA decomposes the local models ``params - delta``).
  """

  name: str
  init: Callable[[PyTree], PyTree]
  aggregate: Callable[[PyTree, PyTree, jax.Array, jax.Array, jax.Array, PyTree],
                      tuple[PyTree, PyTree, Metrics]]


Aggregator = StreamingAggregator | CohortAggregator


class Preprocessor(NamedTuple):
  """A per-client step on each upload before aggregation (vmapped by the round).

  The round runs the configured chain in order (e.g. clip -> local noise ->
  compress -> mask), each step with its own key per client and round.

  Attributes:
    name: prefix of its metrics.
    apply: ``(delta, key) -> (delta, metrics)`` for one client; metrics are
      per-client scalars, reported as their mean over counted clients. With
      ``init_state``: ``(delta, key, state) -> (delta, new_state, metrics)``.
    init_state: None for a stateless step; else ``template delta -> one
      client's state`` (e.g. an error-feedback residual), kept for the whole
      population in ``PopulationState.preprocess`` (``[K, ...]``, gathered and
      scattered chunk by chunk like the algorithm's client state) and
      updated only for clients whose upload counted.
  """

  name: str
  apply: Callable[..., tuple]
  init_state: Callable[[PyTree], PyTree] | None = None


def no_state(_: PyTree) -> tuple:
  return ()


def require_sum(wrapper: str, inner: Aggregator, why: str) -> StreamingAggregator:
  """``inner`` if it is sum-decomposable, else a ``ValueError`` saying what ``wrapper`` needs.

  Args:
    wrapper: the wrapper's name, for the message.
    inner: the aggregator to wrap.
    why: why ``wrapper`` needs a sum (one clause).
  """
  if isinstance(inner, StreamingAggregator) and inner.summand is not None:
    return inner
  if isinstance(inner, CohortAggregator):
    needs = "needs every client's update at once (use 'mean')"
  else:
    needs = ("exposes no per-client sum (use 'mean'; a wrapper that changes the "
             "sum's arithmetic, such as secure_sum, goes last in config.wrap.chain)")
  raise ValueError(f"inner: {wrapper} {why}, so it wraps only a sum-decomposable "
                   f"aggregator; {inner.name!r} {needs}")


def stateless(name: str, reduce: Callable[[PyTree, jax.Array, jax.Array],
                                          tuple[PyTree, Metrics]]) -> CohortAggregator:
  """A :class:`CohortAggregator` from a pure ``(deltas, weights, mask) -> (aggregate, metrics)``."""

  def aggregate(state, deltas, weights, mask, key, params):
    del key, params
    result, metrics = reduce(deltas, weights, mask)
    return result, state, metrics

  return CohortAggregator(name=name, init=no_state, aggregate=aggregate)


def stack_bytes(template: PyTree, num_clients: int) -> int:
  """Bytes of ``num_clients`` stacked copies of ``template``."""
  return num_clients * sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                           for x in jax.tree.leaves(template))


def check_stack_fits(aggregator: Aggregator, template: PyTree, num_clients: int,
                     max_bytes: int) -> None:
  """Refuses a whole-cohort aggregator whose stacked updates exceed ``max_bytes``."""
  if not isinstance(aggregator, CohortAggregator):
    return
  size = stack_bytes(template, num_clients)
  if size > max_bytes:
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(template))
    raise ValueError(
        f"aggregator {aggregator.name!r} stacks the whole cohort: {num_clients} clients x "
        f"{params:,} parameters = {size / 2**20:,.1f} MiB > the cap of "
        f"{max_bytes / 2**20:,.1f} MiB; lower clients_per_round, raise the cap, or use a "
        "streaming aggregator")
