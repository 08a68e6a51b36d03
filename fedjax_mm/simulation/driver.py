"""The training driver: config in, a run directory out.

Reads top to bottom: validate the config; build data, model, optimizers and
the jitted round; restore the latest checkpoint if the workdir has one; run
rounds with a progress bar, evaluating and checkpointing as configured (each
round checked for divergence, ``divergence.py``, counted when it had no row
that can train, and its path efficiency taken against the round-0 parameters,
``trajectory.py``); write ``metrics.jsonl``, ``summary.json`` and the final
checkpoint. A damaged latest checkpoint falls back to the newest good one
(``resume.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
import numpy as np
import tqdm

from fedjax_mm import checkpoint as checkpoint_lib
from fedjax_mm import configuration, evaluation, metrics as metrics_lib
from fedjax_mm import setups
from fedjax_mm.data import federated
from fedjax_mm.simulation import builders, divergence
from fedjax_mm.simulation import mesh as mesh_lib
from fedjax_mm.simulation import round as round_lib
from fedjax_mm.simulation import resume, run_config, trajectory
from fedjax_mm.simulation import validation


# Kept here too: callers catch ``driver.NonFiniteError`` and call ``check_round``.
NonFiniteError = divergence.NonFiniteError
check_round = divergence.check_round


class NoTrainableRowsError(RuntimeError):
  """No round of the run had a row that can train: nothing was learned."""


# What a finished-but-failed run raises (each message one line): the CLI
# prints these, as it prints a ConfigError.
RUN_ERRORS = (NonFiniteError, NoTrainableRowsError, resume.CheckpointError)


def _no_trainable_rows(record: dict[str, Any]) -> int:
  """1 when no client of the round took a step on a trainable row, else 0.

  ``client_steps`` sums the cohort's local steps that had at least one row
  passing ``task.example_mask`` (``client.client_step``): 0 means the round
  trained on nothing, whatever its loss (0.0) and rows_used_fraction say.
  """
  return int(record["client_steps"] == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, progress: bool = True, setup: setups.Setup | None = None,
                       return_trainable: bool = False
                       ) -> dict[str, Any] | tuple[dict[str, Any], Any]:
  """Runs (or resumes) a federated training run in ``workdir``.

  Args:
    config: the run config (validated here, before any compute).
    workdir: run directory; resumed from its latest checkpoint if any.
    progress: show progress bars.
    setup: a prebuilt :class:`setups.Setup` for this config (experiments
      that compare several runs on one world reuse it); built if None.
    return_trainable: also return the final global trainable parameters
      (e.g. to generate captions with them).

  Returns:
    The summary also written to ``workdir/summary.json``; with
    ``return_trainable``, ``(summary, trainable)``.

  Raises:
    configuration.ConfigError: a bad config, custom weights file or resume,
      or no row that can train anywhere (before any round).
    NonFiniteError: the run diverged (``divergence.check_round``).
    NoTrainableRowsError: every round ran without a trainable row (after
      ``summary.json`` is written).
    resume.CheckpointError: no checkpoint of the workdir restores.
  """
  # --- Config: all checks before any compute. -------------------------------
  validation.validate(config)
  if config.num_devices > jax.device_count():
    raise configuration.ConfigError(
        f"config.num_devices: must be <= {jax.device_count()} (devices present), "
        f"got {config.num_devices}")
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)

  ckpt = checkpoint_lib.Checkpointer(
      workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep,
      save_interval_steps=config.checkpoint.every or config.num_rounds,
      async_save=config.checkpoint.async_save)
  resuming = ckpt.latest_step() is not None
  if resuming:
    try:
      run_config.check_resume(workdir, config)
    except configuration.ConfigError:
      ckpt.close()
      raise
  run_config.save(workdir, config)

  # --- Data, model, parts, the compiled round. --------------------------------
  started = time.perf_counter()
  train, test, task, setup_info = setup or setups.build(config, progress=progress)
  trainable_rows = federated.trainable_sizes(train, task.example_mask)
  try:
    if not trainable_rows.any():
      raise configuration.ConfigError(
          f"config.data: must give some client a row that can train, got none of the "
          f"{train.num_examples} training rows passing the task's example mask (e.g. no "
          "captions: check data.partition.caption_rate and missing_fraction)")
    weights = builders.aggregation_weights(config, train, task)
  except configuration.ConfigError:
    ckpt.close()
    raise
  mesh = mesh_lib.make_client_mesh(config.num_devices)
  server_tx = builders.server_optimizer(config)
  parts = builders.round_parts(config, jax.eval_shape(task.init_trainable, jax.random.key(0)))
  spec = round_lib.RoundSpec(
      num_clients=config.data.num_clients, cohort_size=config.clients_per_round,
      chunk_size=config.chunk_size, sampling=config.sampling,
      schedule=federated.LocalSchedule(config.local.mode, config.local.num_steps,
                                       config.local.batch_size, config.local.num_epochs))
  truncation = builders.truncation_report(spec.schedule, train)
  if truncation:
    logging.warning(
        "config.local.num_steps=%d caps epochs mode: %.0f%% of clients cannot finish "
        "%d epoch(s) and %.1f%% of all rows are never seen (num_steps=%d would cover "
        "every client); metrics.jsonl records rows_used_fraction per round",
        config.local.num_steps, 100 * truncation["fraction_of_clients"],
        config.local.num_epochs, 100 * truncation["fraction_of_rows"],
        truncation["steps_needed"])
  try:
    round_fn = jax.jit(round_lib.build_round_fn(
        task, spec, server_tx, builders.client_optimizer(config),
        builders.schedule(config.client, config.num_rounds), mesh=mesh,
        algorithm=parts.algorithm, aggregator=parts.aggregator,
        preprocessors=parts.preprocessors,
        max_stack_bytes=int(config.aggregation.max_stack_mib * 2**20)),
        donate_argnums=(0, 1))
  except ValueError as e:
    raise configuration.ConfigError(f"config.aggregation.max_stack_mib: {e}") from None
  eval_fn = jax.jit(evaluation.build_eval_fn(task, test, config.eval_batch_size))
  agg_weights = mesh_lib.put_replicated(weights, mesh)
  # Size sampling draws by the rows that can train, like the weights.
  sample_weights = mesh_lib.put_replicated(
      trainable_rows.astype(np.float32), mesh)
  train_dev = mesh_lib.put_replicated(train, mesh)
  test_dev = mesh_lib.put_replicated(test, mesh)
  frozen = mesh_lib.put_replicated(task.frozen, mesh)

  # --- Initial state, or the latest checkpoint. ------------------------------
  run_state = mesh_lib.put_replicated({
      "server": round_lib.init_server_state(task, server_tx, config.seed,
                                            algorithm=parts.algorithm,
                                            aggregator=parts.aggregator),
      "population": round_lib.init_population(task, config.data.num_clients,
                                              algorithm=parts.algorithm,
                                              preprocessors=parts.preprocessors),
  }, mesh)
  # W_0 of the path efficiency: the round-0 trainable (from the config, so a
  # resumed run gets the same one), copied before the round donates it.
  initial_trainable = jax.tree.map(jnp.copy, run_state["server"].trainable)
  history: list[dict[str, Any]] = []
  start_round = 0
  if resuming:
    try:
      run_state, meta, step, notes = resume.restore_newest(
          ckpt, checkpoint_lib.abstract_like(run_state))
    except resume.CheckpointError:
      ckpt.close()
      raise
    for note in notes:
      logging.warning("checkpoint %s; resuming from step %d", note, step)
    history = list(meta["history"])
    start_round = int(run_state["server"].round)
  metrics_lib.rewrite(workdir, history)

  def evaluate(trainable) -> dict:
    return jax.device_get(eval_fn(trainable, test_dev, frozen))   # per-client sums

  # --- Rounds. ----------------------------------------------------------------
  bar = tqdm.tqdm(total=config.num_rounds, initial=start_round, disable=not progress,
                  desc="rounds", unit="round", dynamic_ncols=True)
  train_seconds = 0.0
  final_clients = None   # each client's final accuracy, when this run evaluated the last round
  for r in range(start_round, config.num_rounds):
    tick = time.perf_counter()
    server, pop, round_metrics = round_fn(
        run_state["server"], run_state["population"], train_dev, agg_weights,
        sample_weights, frozen)
    run_state = {"server": server, "population": pop}
    record = {"round": r + 1, **metrics_lib.to_python(jax.device_get(round_metrics))}
    stats = jax.device_get(divergence.server_stats(server))
    record["server_step_norm"] = float(stats["server_step_norm"])
    record.update(trajectory.path_record(server, initial_trainable))
    record["no_trainable_rows"] = _no_trainable_rows(record)
    train_seconds += time.perf_counter() - tick
    try:
      check_round(record, config, history, params_finite=bool(stats["params_finite"]))
    except NonFiniteError:
      ckpt.close()
      raise
    is_last = r + 1 == config.num_rounds
    if is_last or (config.eval_every and (r + 1) % config.eval_every == 0):
      sums = evaluate(server.trainable)
      record.update({f"eval_{k}": v for k, v in evaluation.summarize(sums).items()})
      if is_last:   # kept in the summary only: bootstrap intervals resample the clients
        final_clients = evaluation.per_client_accuracy(sums)
    history.append(record)
    metrics_lib.append(workdir, record)
    ckpt.save(r + 1, run_state, {"history": history}, force=is_last)
    bar.set_postfix({k: f"{record[k]:.4g}" for k in
                     ("train_loss", "eval_accuracy") if k in record})
    bar.update(1)
  bar.close()
  ckpt.close()

  # --- Summary. -----------------------------------------------------------------
  final = history[-1] if history else {}
  pop = jax.device_get(run_state["population"].stats)
  summary = {
      "rounds": config.num_rounds,
      "resumed_from_round": start_round,
      "final": final,
      "best_eval_accuracy": max((h.get("eval_accuracy", 0.0) for h in history), default=0.0),
      "final_clients": final_clients,
      "clients_ever_sampled": int(np.sum(np.asarray(pop.participations) > 0)),
      "nonfinite_updates_total": int(np.sum(pop.nonfinite_updates)),
      "wall_seconds": time.perf_counter() - started,
      "round_seconds_this_run": train_seconds,
      "devices": mesh.size,          # the mesh the cohort was sharded over
      "devices_total": jax.device_count(),
      "rounds_without_trainable_rows": sum(h.get("no_trainable_rows", 0) for h in history),
      "algorithm": parts.algorithm.name,
      "aggregator": parts.aggregator.name,
      "epochs_truncation": truncation,
      "setup": setup_info,
  }
  metrics_lib.write_summary(workdir, summary)
  if history and summary["rounds_without_trainable_rows"] == len(history):
    raise NoTrainableRowsError(
        f"no round of {len(history)} trained on any row (every sampled client's rows fail "
        f"the task's example mask); {summary['rounds_without_trainable_rows']} rounds "
        f"recorded in {workdir / metrics_lib.SUMMARY_FILE}")
  if return_trainable:
    return summary, jax.device_get(run_state["server"].trainable)
  return summary
