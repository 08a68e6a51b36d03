"""The synthetic multimodal world's own config fields, checked before any compute.

The ``"world"`` dataset's validation (its build is ``setups/fedma.py``): the
towers' sizes and recipes, the world's rendering, the partition, the
projector and the objective.
"""

from __future__ import annotations

import ml_collections

from fedjax_mm import configuration
from fedjax_mm.configuration import number, one_of
from fedjax_mm.data import partition, world
from fedjax_mm.models import mllm, projector
from fedjax_mm.setups import fedma


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the world's ``config.data`` and ``config.model`` fields."""
  positive_ints = ("data.examples_per_client", "data.public_vision_examples",
                   "data.public_text_examples", "model.vision.patch_size",
                   "model.vision.width", "model.vision.depth", "model.vision.num_heads",
                   "model.vision.mlp_dim", "model.vision.steps", "model.vision.batch_size",
                   "model.lm.width", "model.lm.depth", "model.lm.num_heads", "model.lm.mlp_dim",
                   "model.lm.max_len", "model.lm.steps", "model.lm.batch_size")
  for path in positive_ints:
    number(config, path, lambda v: v >= 1, ">= 1", integer=True)
  if 32 % config.model.vision.patch_size:
    raise configuration.ConfigError("config.model.vision.patch_size: must divide the image "
                                    f"size 32, got {config.model.vision.patch_size}")
  for path in ("model.vision.learning_rate", "model.lm.learning_rate", "model.temperature"):
    number(config, path, lambda v: v > 0, "> 0")
  for path in ("data.world.distractor_prob",):
    number(config, path, lambda v: 0 <= v <= 1, "in [0, 1]")
  for path in ("data.world.noise", "data.world.jitter"):
    number(config, path, lambda v: v >= 0, ">= 0")
  one_of(config, "data.feature_dtype", tuple(fedma.FEATURE_DTYPES))
  number(config, "data.eval_clients", lambda v: v >= 0, ">= 0 (0 = all clients)",
         integer=True)
  one_of(config, "model.vision.stem", ("patch", "overlap", "conv"))
  one_of(config, "model.objective", mllm.OBJECTIVES)
  one_of(config, "model.projector.kind", projector.PROJECTOR_KINDS)
  number(config, "model.projector.pool_to", lambda v: v >= 0, ">= 0 (0 = no pooling)",
         integer=True)
  number(config, "model.projector.hidden_dim", lambda v: v >= 0, ">= 0 (0 = LM width)",
         integer=True)
  vis_tokens = config.model.projector.pool_to or (32 // config.model.vision.patch_size) ** 2
  needed = max(vis_tokens + 2 + world.CAPTION_LENGTH, 2 * world.CAPTION_LENGTH + 1)
  number(config, "model.lm.max_len", lambda v: v >= needed,
         f">= {needed} (visual tokens + BOS + SEP + caption, and pretraining pairs)",
         integer=True)
  one_of(config, "data.partition.kind", ("iid", "dirichlet", "shards"))
  one_of(config, "data.partition.quantity", ("equal", "power_law"))
  one_of(config, "data.partition.style_mode", ("none", "per_client", "iid"))
  try:
    partition.validate_spec(fedma.partition_spec(config))
  except ValueError as e:
    raise configuration.ConfigError(f"config.data.partition: {e}") from None
