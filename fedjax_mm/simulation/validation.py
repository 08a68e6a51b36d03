"""Every check of a run config, before any data is built or anything compiled.

Three layers, each owning its fields: the run-level fields
(``configuration.validate_run``), the chosen dataset's own fields
(``setups.validate``), and every chosen part, dry-built from its registry so
that a part's own checks (and its checks against the run, e.g. Krum's
``clients_per_round >= 2 f + 3``) speak with the config path
(``config.aggregation.krum.num_byzantine: must be ...``). Building a part
allocates nothing: parts are closures over their options.
"""

from __future__ import annotations

import ml_collections

from fedjax_mm import configuration, setups
from fedjax_mm.simulation import builders, divergence, weights


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`~fedjax_mm.configuration.ConfigError` on the first invalid field."""
  configuration.validate_run(config)
  try:   # optional run-level fields owned by the driver's guards
    divergence.check_factor(config.get("divergence_factor", divergence.DEFAULT_FACTOR))
    if config.aggregation.weighting == "custom":
      weights.load_custom_weights(config.aggregation.custom_weights_path,
                                  config.data.num_clients)
  except configuration.ConfigError:
    raise
  except ValueError as e:
    message = str(e)
    raise configuration.ConfigError(
        message if message.startswith("config.")
        else f"config.aggregation.custom_weights_path: {message}") from None
  try:
    setups.validate(config)
  except configuration.ConfigError:
    raise
  except ValueError as e:   # the registry's own "config.data.name: ..." line
    raise configuration.ConfigError(str(e)) from None
  builders.server_optimizer(config)
  builders.round_parts(config)
  _check_basis_sides(config)


def _check_basis_sides(config: ml_collections.ConfigDict) -> None:
  # OPM reads CRA's bases from the aggregator's state: both must decompose the
  # same side of each matrix. The shapes cannot tell for square kernels (the
  # projector's LM-width layer), so the config must.
  if config.server.kind != "opm" or config.aggregation.kind != "canonical":
    return
  opm, cra = config.server.opm.get("side", "input"), config.aggregation.canonical.get(
      "side", "input")
  if opm != cra:
    raise configuration.ConfigError(
        f"config.server.opm.side: must equal config.aggregation.canonical.side ({cra!r}: OPM "
        f"moves the basis CRA builds), got {opm!r}")
