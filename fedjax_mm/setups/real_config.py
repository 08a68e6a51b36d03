"""The real Fed-MA setup's own config fields, checked before any weight is read.

The ``"real"`` dataset's validation (its build is ``setups/fedma_real.py``).
"""

from __future__ import annotations

import ml_collections

from fedjax_mm import configuration
from fedjax_mm.configuration import number, one_of
from fedjax_mm.setups import fedma_real


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the real setup's ``config.data`` and ``config.model`` fields."""
  number(config, "data.labelled_examples", lambda v: v >= 0, ">= 0 (0 = the whole split)",
         integer=True)
  one_of(config, "data.labelled", ("fashion_mnist_captions", "fashion_mnist"))
  one_of(config, "data.captioned", ("tux_paint_stamps", ""))
  one_of(config, "data.feature_dtype", tuple(fedma_real.FEATURE_DTYPES))
  number(config, "data.eval_clients", lambda v: v >= 0, ">= 0 (0 = all clients)",
         integer=True)
  one_of(config, "data.partition.kind", ("iid", "dirichlet"))
  number(config, "data.partition.alpha", lambda v: v > 0, "> 0")
  one_of(config, "model.objective", ("captioning",))
  one_of(config, "model.vision_tokens", fedma_real.VISION_TOKENS)
  one_of(config, "model.feature_norm", fedma_real.FEATURE_NORMS)
  number(config, "model.lm_layers", lambda v: 0 <= v <= fedma_real.LM_LAYERS,
         f"in [0, {fedma_real.LM_LAYERS}] (0 = all)", integer=True)
  one_of(config, "model.lm_dtype", tuple(fedma_real.LM_DTYPES))
  number(config, "model.max_caption_tokens", lambda v: v >= 2, ">= 2 (a word and the end)",
         integer=True)
  if not isinstance(config.model.prompt, str) or not config.model.prompt:
    raise configuration.ConfigError(
        "config.model.prompt: must be a non-empty string (its last token's output predicts "
        f"the caption's first word), got {config.model.prompt!r}")
  one_of(config, "model.projector.kind", ("linear", "mlp2x_gelu"))
  number(config, "model.projector.hidden_dim", lambda v: v >= 0, ">= 0 (0 = LM width)",
         integer=True)
