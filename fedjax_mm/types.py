"""Core conventions, aliases and containers shared by every module.

Shape letters used in names where a shape is not obvious:
  C clients in the cohort, S local steps, B local batch, K population size,
  N examples in a packed dataset, F features, P parameters.

Sign convention: a client returns ``delta = global_params - local_params`` (a
pseudo-gradient, same sign as a gradient). The server feeds the aggregated
delta to an optax transform and applies it with ``optax.apply_updates``, so
FedAvg is exactly ``optax.sgd(1.0)`` on the weighted mean delta.

Frozen vs trainable: a model's parameters are two separate pytrees. Only the
``trainable`` tree is ever differentiated, carried per client, put in optimizer
state or aggregated; the ``frozen`` tree is a shared input (``in_axes=None``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import optax
from flax import struct

PyTree = Any
Batch = Mapping[str, jax.Array]
# (trainable, frozen, batch) -> per-example loss [B].
PerExampleLossFn = Callable[[PyTree, PyTree, Batch], jax.Array]
# (trainable, frozen, batch) -> {metric name: per-example value [B]}.
PerExampleMetricsFn = Callable[[PyTree, PyTree, Batch], Mapping[str, jax.Array]]
# (trainable, frozen, batch) -> {kernel path "a/b/kernel": its layer's inputs [B, R, in]}.
LinearInputsFn = Callable[[PyTree, PyTree, Batch], Mapping[str, jax.Array]]


class Task(NamedTuple):
  """What the simulator trains: a model's pure functions and frozen weights.

  Attributes:
    init_trainable: ``key -> trainable params`` (the only part that learns).
    frozen: frozen parameters, shared by every client (may be an empty dict).
    per_example_loss: ``(trainable, frozen, batch) -> [B]`` training loss.
    per_example_metrics: ``(trainable, frozen, batch) -> {name: [B]}`` for
      evaluation; must contain ``'loss'`` and ``'accuracy'``; every entry is
      summed per client and reported.
    example_mask: optional ``batch -> [B] bool``: examples that must not
      train (e.g. images without a caption); combined with the padding mask.
    linear_inputs: optional ``(trainable, frozen, batch) -> {path: [B, R,
      in]}``: for each linear layer ``y = x W`` of the trainable model (a
      2-D kernel ``[in, out]`` named by its ``/``-joined path in the
      trainable tree, e.g. ``"projector/fc1/kernel"``), the ``R`` input rows
      ``x`` each example feeds it under ``trainable`` (``R = 1`` for a plain
      feature vector, the tokens for a projector). Algorithms that merge
      layers from their input Gram matrices (RegMean) need it; the
      caller masks padded and ``example_mask``-ed examples.
  """

  init_trainable: Callable[[jax.Array], PyTree]
  frozen: PyTree
  per_example_loss: PerExampleLossFn
  per_example_metrics: PerExampleMetricsFn
  example_mask: Callable[[Batch], jax.Array] | None = None
  linear_inputs: LinearInputsFn | None = None


@struct.dataclass
class ServerState:
  """Everything the server carries from one round to the next.

  Attributes:
    round: int32 scalar, number of completed rounds.
    trainable: the global trainable parameters.
    opt_state: state of the server optax transform.
    rng: root PRNG key of the run; round keys are ``fold_in(rng, round)``.
    algorithm: the algorithm's server-side state (e.g. SCAFFOLD's server
      control variate); ``()`` when it has none.
    aggregator: the aggregator's state carried across rounds; ``()`` when
      it has none.
    last_update: the update the server applied last round (zeros before
      the first), for the round-to-round metric ``update_cosine``; ``()``
      turns the metric off.
    last_pseudo_gradient: the pseudo-gradient the server transform received
      last round (zeros before the first), for ``pseudo_gradient_cosine``
      (``simulation/trajectory.py``); ``()`` turns the metric off.
    path_length: float32 scalar, the sum of the applied updates' L2 norms
      so far (the path efficiency's denominator, carried so that a resumed
      run continues it); ``()`` turns the path metrics off.
  """

  round: jax.Array
  trainable: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  algorithm: PyTree = ()
  aggregator: PyTree = ()
  last_update: PyTree = ()
  last_pseudo_gradient: PyTree = ()
  path_length: jax.Array | tuple = ()


@struct.dataclass
class ClientResult:
  """What one client sends back after local training.

  Attributes:
    delta: ``global - local`` trainable parameters.
    weight: aggregation weight (0 for padding clients and excluded updates).
    num_examples: examples the client holds for training.
    loss_sum: sum over valid local steps of the step's mean loss.
    num_steps: local steps actually taken (padded steps excluded).
    is_finite: False when the update had a NaN/Inf and was excluded.
    extras: named uploads besides the delta (e.g. SCAFFOLD's ``delta_c``,
      FedNova's normalizer); summed over the cohort's counted clients.
  """

  delta: PyTree
  weight: jax.Array
  num_examples: jax.Array
  loss_sum: jax.Array
  num_steps: jax.Array
  is_finite: jax.Array
  extras: Mapping[str, PyTree] = struct.field(default_factory=dict)


# The initial parameters' key is folded from the root key with an index no
# round reaches (round keys are ``fold_in(root, round)``), so it is
# independent of every round's randomness.
INIT_KEY_INDEX = 2**31 - 1


def initial_trainable(task: Task, seed: int) -> PyTree:
  """A run's round-0 trainable parameters: ``task.init_trainable`` on the seed's init key.

  The one derivation shared by the round's server state, the centralized
  reference and the experiments' floor (the untrained model), so all of them
  start from the same parameters for the same seed.
  """
  return task.init_trainable(jax.random.fold_in(jax.random.key(seed), INIT_KEY_INDEX))
