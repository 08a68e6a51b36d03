"""The frozen real towers of Fed-MA and their text side: loading, layout, tokens, captions.

SmolLM2-135M-Instruct (from its GGUF) and EfficientNet-Lite0 (from its
torch pickle), loaded offline from the fetched assets; the token layout
``<|endoftext|>`` image prompt caption ``<|endoftext|>``; caption
tokenization; greedy captioning under a trained projector.

References:
  Allal et al., "SmolLM2", arXiv:2502.02737, 2025. Tan & Le,
  "EfficientNet", ICML 2019. Liu et al., "Visual Instruction Tuning"
  (LLaVA), NeurIPS 2023.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_mm.models import mllm
from fedjax_mm.models.projector import Projector
from fedjax_mm.real import bpe, efficientnet, smollm

LM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Towers(NamedTuple):
  """The frozen towers and the LM's text side."""
  lm: smollm.Llama
  lm_params: Any
  tokenizer: Any
  special: bpe.SpecialTokens
  vision: Any                           # EfficientNet-Lite0 variables


def build_towers(config: ml_collections.ConfigDict) -> Towers:
  """Loads both towers from the fetched assets (offline; a clear error if missing)."""
  lm, params, tokenizer, special = smollm.load(num_layers=config.model.lm_layers or None)
  towers = Towers(lm, params, tokenizer, special, efficientnet.load_params())
  return with_lm_dtype(towers, config.model.lm_dtype)


def with_lm_dtype(towers: Towers, name: str) -> Towers:
  """The towers with the frozen LM computing (and its weights stored) in ``name``.

  Stored in the compute dtype: bfloat16 halves the memory and bandwidth.
  """
  dtype = LM_DTYPES[name]
  lm = smollm.Llama(towers.lm.config, num_layers=towers.lm.num_layers, dtype=dtype)
  return towers._replace(lm=lm, lm_params=jax.tree.map(lambda p: p.astype(dtype),
                                                       towers.lm_params))


def layout(config: ml_collections.ConfigDict, towers: Towers) -> mllm.TokenLayout:
  """``<|endoftext|>`` image ``prompt`` caption ``<|endoftext|>``, padded with ``<|im_end|>``.

  SmolLM2 adds no BOS to plain text; its pretraining documents are separated
  by ``<|endoftext|>``, so a sequence that starts with one and whose caption
  ends with one is in the LM's own format. Padding uses the model's pad id
  (``<|im_end|>``), which no caption contains.
  """
  s = towers.special
  prompt = towers.tokenizer.encode(config.model.prompt, add_special_tokens=False).ids
  return mllm.TokenLayout(bos=s.endoftext, sep=tuple(prompt), pad=s.pad)


def tokenize(towers: Towers, texts: Sequence[str], max_tokens: int) -> np.ndarray:
  """Captions -> int32 ``[N, L]``: ``w1 .. wk <|endoftext|> pad ..``, L = longest.

  Captions longer than ``max_tokens - 1`` words are cut (the end token kept).
  """
  eos, pad = towers.special.endoftext, towers.special.pad
  ids = [e.ids[:max_tokens - 1] + [eos]
         for e in towers.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
  out = np.full((len(ids), max(map(len, ids), default=1)), pad, np.int32)
  for i, row in enumerate(ids):
    out[i, :len(row)] = row
  return out



@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "stop_ids"))
def _generate(model: mllm.MLLM, proj_params: Any, lm_params: Any, vis: jax.Array, *,
              max_new_tokens: int, stop_ids: tuple[int, ...]) -> jax.Array:
  prefix = model.prefix(proj_params, lm_params, vis)
  sep = jnp.broadcast_to(jnp.asarray(model.layout.sep, jnp.int32),
                         (vis.shape[0], len(model.layout.sep)))
  prompt = model.lm.apply({"params": lm_params}, sep, method=smollm.Llama.embed)
  return smollm.greedy_generate(model.lm, lm_params,
                                jnp.concatenate([prefix, prompt.astype(prefix.dtype)], 1),
                                max_new_tokens, stop_ids)


def generate_captions(config: ml_collections.ConfigDict, towers: Towers, trainable: Any,
                      vis: np.ndarray, max_new_tokens: int = 16) -> list[str]:
  """Greedy captions of cached features ``vis`` under the projector in ``trainable``.

  ``vis`` are features as the setup's data holds them (standardized when the
  config says so: ``setup.test`` or :func:`stamp_test` rows).

  The LM continues ``[bos] + projector(vis) + prompt`` until it emits an end
  token (``<|endoftext|>`` or ``<|im_end|>``) or ``max_new_tokens``. One
  compilation per (model, batch shape, length): later calls reuse it.
  """
  p = config.model.projector
  projector = Projector(kind=p.kind, out_dim=towers.lm.config.width,
                        hidden_dim=p.hidden_dim or None)
  model = mllm.MLLM(towers.lm, projector, layout(config, towers))
  stops = tuple(towers.special.stop_ids())
  ids = np.asarray(_generate(model, trainable["projector"], towers.lm_params, jnp.asarray(vis),
                             max_new_tokens=max_new_tokens, stop_ids=stops))
  out = []
  for row in ids:
    cut = next((i for i, t in enumerate(row) if t in stops), len(row))
    out.append(towers.tokenizer.decode(row[:cut].tolist()).strip())
  return out
