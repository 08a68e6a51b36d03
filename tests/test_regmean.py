"""RegMean against an independent NumPy reference of the paper's formula, its limits and guards.

The setting is a tiny linear regression ``y = x W + b`` (squared loss) whose
clients hold at most ``B`` rows, so every local step is a full-batch gradient
step: the reference runs local GD in float64 and merges with
``W* = (Σ_k G̃_k + λ I)⁻¹ (Σ_k G̃_k W_k + λ W)``, ``G̃_k = α X_kᵀX_k + (1 − α)
diag(X_kᵀX_k)`` (Jin et al., ICLR 2023, Sec. 3; ``λ`` our documented ridge),
the bias by the example-weighted mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import build
from fedjax_mm import algorithms, client as client_lib
from fedjax_mm.algorithms.regmean import scale_off_diagonal, solve_merged
from fedjax_mm.data import federated
from fedjax_mm.models import mllm
from fedjax_mm.models.language import CausalLM
from fedjax_mm.models.projector import Projector
from fedjax_mm.simulation import round as round_lib
from fedjax_mm.types import Task

F, O = 3, 2
W0 = np.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]])
B0 = np.array([0.05, -0.1])
STEPS, BATCH, LR = 3, 8, 0.1
SCHEDULE = federated.LocalSchedule("steps", STEPS, BATCH)   # n <= B: full-batch steps
# float32 simulation vs float64 reference over 2 rounds of 3 steps; the solve
# amplifies float32 rounding by cond(Σ G̃) < 30 (asserted below): 2e-5 relative
# leaves ~10x room, atol covers entries near zero.
RTOL, ATOL = 2e-5, 1e-6


def linreg_task(hook=lambda x: {"lin/w": x[:, None, :]}) -> Task:
  def init_trainable(key):
    del key
    return {"lin": {"w": jnp.asarray(W0, jnp.float32), "b": jnp.asarray(B0, jnp.float32)}}

  def loss(trainable, frozen, batch):
    del frozen
    p = trainable["lin"]
    return 0.5 * jnp.sum((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2, axis=-1)

  metrics = lambda t, f, b: {"loss": loss(t, f, b), "accuracy": jnp.zeros_like(loss(t, f, b))}
  linear_inputs = None if hook is None else (lambda t, f, batch: hook(batch["x"]))
  return Task(init_trainable=init_trainable, frozen={}, per_example_loss=loss,
              per_example_metrics=metrics, linear_inputs=linear_inputs)


def population(sizes, seed=0, same_x=False):
  """Clients' ``(X_k, Y_k)`` on the host (float64) and packed (float32)."""
  rng = np.random.default_rng(seed)
  shared = rng.normal(size=(max(sizes), F))
  xs = [shared[:n] if same_x else rng.normal(size=(n, F)) + 0.3 * k
        for k, n in enumerate(sizes)]
  ys = [x @ rng.normal(size=(F, O)) + 0.1 * rng.normal(size=(len(x), O)) for x in xs]
  owners = np.repeat(np.arange(len(sizes)), sizes)
  examples = {"x": np.concatenate(xs).astype(np.float32),
              "y": np.concatenate(ys).astype(np.float32)}
  return xs, ys, jax.device_put(federated.pack(examples, owners, len(sizes)))


def reference(xs, ys, weights, rounds, alpha, ridge):
  """The paper's RegMean after local full-batch GD, in float64 (written from the formula)."""
  w, b = W0.copy(), B0.copy()
  for _ in range(rounds):
    grams, grams_w, local_b, counted = [], [], [], []
    for x, y, weight in zip(xs, ys, weights):
      if len(x) == 0 or weight == 0:
        continue
      wk, bk = w.copy(), b.copy()
      for _ in range(STEPS):
        r = x @ wk + bk - y
        wk, bk = wk - LR * x.T @ r / len(x), bk - LR * r.mean(axis=0)
      g = x.T @ x
      g = alpha * g + (1 - alpha) * np.diag(np.diag(g))
      grams.append(g)
      grams_w.append(g @ wk)
      local_b.append(bk)
      counted.append(weight)
    total = sum(grams)
    lam = ridge * np.trace(total) / F
    w = np.linalg.solve(total + lam * np.eye(F), sum(grams_w) + lam * w)
    b = np.average(np.array(local_b), axis=0, weights=counted)
  return w, b, np.linalg.cond(total)


def run(data, algorithm, rounds, weights=None, task=None, chunk=0):
  h = build(task=task or linreg_task(), num_clients=data.num_clients, cohort=data.num_clients,
            chunk=chunk, schedule=SCHEDULE, algorithm=algorithm, client_lr=LR)
  state, _, history = h.run(data, rounds, weights=weights)
  return state.trainable["lin"], history


@pytest.mark.parametrize("alpha,ridge,chunk,sizes,weights", [
    (0.5, 0.0, 0, [5, 7, 6, 4], [5, 7, 6, 4]),
    # Streamed in chunks of one client, with the ridge; client 1 holds no row
    # and client 2 has aggregation weight 0: both must contribute nothing.
    (0.9, 0.1, 1, [5, 0, 6, 4], [5, 0, 0, 4])], ids=["paper", "streamed-ridge-empty"])
def test_matches_numpy_reference(alpha, ridge, chunk, sizes, weights):
  xs, ys, data = population(sizes)
  params, history = run(data, algorithms.regmean(alpha=alpha, ridge=ridge), 2,
                        weights=jnp.asarray(weights, jnp.float32), chunk=chunk)
  w, b, cond = reference(xs, ys, weights, 2, alpha, ridge)
  assert cond < 30   # the tolerance's premise
  np.testing.assert_allclose(params["w"], w, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(params["b"], b, rtol=RTOL, atol=ATOL)
  # The bias is a leaf the hook does not name: it got the weighted mean, as
  # any unhooked kernel would. RegMean moved the kernel away from the mean
  # (and says by how much).
  assert float(history[-1]["regmean/kernel_shift_from_mean"]) > 1e-3


def test_identical_grams_give_the_weighted_mean():
  """Equal inputs on every client: (K G̃)⁻¹ Σ G̃ W_k = mean W_k, i.e. FedAvg, whatever α."""
  _, _, data = population([6, 6, 6], same_x=True)
  fedavg, _ = run(data, algorithms.fedavg(), 2)
  merged, _ = run(data, algorithms.regmean(alpha=0.5, ridge=0.0), 2)
  # One float32 solve of a well-conditioned system per round.
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6),
               merged, fedavg)


def test_ridge_solves_a_singular_gram_by_hand():
  @jax.jit   # one small program (eager dispatch would compile each op on its own)
  def solves(gram, rhs):
    return (solve_merged(gram, rhs, 0.1), solve_merged(gram, rhs, 0.0),
            solve_merged(jnp.zeros((2, 2)), jnp.zeros_like(rhs), 1e-5),
            scale_off_diagonal(jnp.array([[4.0, 2.0], [2.0, 1.0]]), 0.25))
  # Input 2 never seen: G = diag(2, 0). λ = 0.1 * tr(G)/2 = 0.1; Δ* = [4/2.1, 0].
  ridged, paper, empty, scaled = solves(jnp.diag(jnp.array([2.0, 0.0])),
                                        jnp.array([[4.0], [0.0]]))
  np.testing.assert_allclose(ridged, [[4 / 2.1], [0.0]], rtol=1e-6)
  assert not np.all(np.isfinite(paper))   # the paper's formula (ridge 0) fails here
  # No counted client at all (zero sums): λ = ridge, the merge is zero.
  np.testing.assert_array_equal(empty, np.zeros((2, 1)))
  np.testing.assert_allclose(scaled, [[4.0, 0.5], [0.5, 1.0]])   # off-diagonals x α


def _projector_task(kind):
  lm = CausalLM(vocab_size=10, width=5)   # never run: the hook reads the projector only
  return mllm.fedma_task(lm, {}, vis_dim=3, num_vis_tokens=16, projector_kind=kind,
                         pool_to=4, hidden_dim=6, output_scale=1.0)


def _gelu(x):   # flax's default (tanh) GELU, from its formula
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_projector_hooks_give_each_layers_inputs():
  kinds = ("linear", "mlp2x_gelu")
  tasks = {k: _projector_task(k) for k in kinds}
  modules = {k: Projector(kind=k, out_dim=5, hidden_dim=6, pool_to=4) for k in kinds}
  vis = np.asarray(jax.random.normal(jax.random.key(1), (2, 16, 3)))

  @jax.jit   # one small program (eager flax would compile op by op)
  def hooks_and_modules(vis):
    out = {}
    for k in kinds:
      trainable = tasks[k].init_trainable(jax.random.key(0))
      out[k] = (trainable["projector"], tasks[k].linear_inputs(trainable, {}, {"vis": vis}),
                modules[k].apply({"params": trainable["projector"]}, vis))
    return out

  results = hooks_and_modules(jnp.asarray(vis))
  # 16 tokens on a 4x4 grid pooled to 2x2: the mean of each 2x2 block.
  grid = vis.reshape(2, 2, 2, 2, 2, 3)    # [b, row block, row, col block, col, d]
  pooled = grid.mean(axis=(2, 4)).reshape(2, 4, 3)
  # float32 vs float64 on O(1) values through <= 2 small matmuls.
  tol = dict(rtol=1e-5, atol=1e-6)
  params, inputs, out = results["linear"]
  assert set(inputs) == {"projector/out/kernel"}
  np.testing.assert_allclose(inputs["projector/out/kernel"], pooled, **tol)
  params, inputs, out = results["mlp2x_gelu"]
  p = jax.tree.map(np.asarray, params)
  assert set(inputs) == {"projector/fc1/kernel", "projector/out/kernel"}
  np.testing.assert_allclose(inputs["projector/fc1/kernel"], pooled, **tol)
  # Layer 2's inputs: the hidden activations under these (the local) parameters.
  hidden = _gelu(pooled @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  np.testing.assert_allclose(inputs["projector/out/kernel"], hidden, **tol)
  # The hook's last-layer rows reproduce the module's own output.
  np.testing.assert_allclose(hidden @ p["out"]["kernel"] + p["out"]["bias"], out, **tol)


@pytest.mark.parametrize("options,message", [
    (dict(alpha=1.5), "alpha: must be"), (dict(alpha=-0.1), "alpha: must be"),
    (dict(alpha=float("nan")), "alpha: must be"), (dict(ridge=-1.0), "ridge: must be"),
    (dict(ridge=float("inf")), "ridge: must be")])
def test_invalid_options_are_refused(options, message):
  with pytest.raises(ValueError, match=message):
    algorithms.ALGORITHMS.make("regmean", **options)


def test_a_task_without_the_hook_is_refused_when_the_round_is_built():
  spec = round_lib.RoundSpec(num_clients=3, cohort_size=3, chunk_size=0, schedule=SCHEDULE)
  with pytest.raises(ValueError, match=r"regmean needs the task hook Task.linear_inputs"):
    round_lib.build_round_fn(linreg_task(hook=None), spec, optax.sgd(1.0),
                             client_lib.make_client_optimizer("sgd"), LR,
                             algorithm=algorithms.regmean())


@pytest.mark.parametrize("hook,message", [
    (lambda x: {"lin/nope": x[:, None, :]}, "'lin/nope' is not a trainable parameter"),
    (lambda x: {"lin/b": x[:, None, :]}, "'lin/b' must be a 2-D kernel"),
    (lambda x: {"lin/w": x}, r"'lin/w' inputs must be \[B, R, 3\]"),
    (lambda x: {"lin/w": x[:, None, :2]}, r"'lin/w' inputs must be \[B, R, 3\]")])
def test_a_hook_that_does_not_fit_the_model_is_refused(hook, message):
  _, _, data = population([5, 7, 6])
  h = build(task=linreg_task(hook), num_clients=3, cohort=3, schedule=SCHEDULE,
            algorithm=algorithms.regmean(), jit=False)
  with pytest.raises(ValueError, match=message):   # at trace time: nothing compiles
    jax.eval_shape(h.fn, h.state, h.pop, data, data.sizes.astype(jnp.float32), None)
