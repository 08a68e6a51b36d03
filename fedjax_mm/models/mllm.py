"""Fed-MA objectives: a trained projector between a frozen ViT and a frozen LM.

Holds :func:`fedma_task` (the :class:`~fedjax_mm.types.Task` the engine
trains) and :func:`encode_images` (the cached vision features its batches
carry). Re-exported here: the model and its losses, :class:`TokenLayout` and
:class:`MLLM` (:mod:`fedjax_mm.models.mllm_objectives`, which also describes
the batch format and the two objectives, LLaVA stage-1 captioning and
CLIP-style InfoNCE), and the caption-ranking metrics :func:`alignment_metrics`
(:mod:`fedjax_mm.models.alignment_metrics`).

What the engine must do with these losses: ``per_example_loss`` is 0 on rows
with ``has_caption=False``, so the client's batch mask must be multiplied by
``has_caption`` (``mask & batch['has_caption']``) for the masked mean not to
count them; a client with no caption at all then takes no step. For the
contrastive objective the engine passes its batch mask as ``batch['valid']``
(:func:`fedjax_mm.client.client_step` does): padded slots repeat a real row
and would be false negatives.

References:
  Liu et al., "Visual Instruction Tuning" (LLaVA), NeurIPS 2023;
  arXiv:2304.08485. Liu et al., "Improved Baselines with Visual Instruction
  Tuning" (LLaVA-1.5), CVPR 2024; arXiv:2310.03744. van den Oord et al.,
  "Representation Learning with Contrastive Predictive Coding" (InfoNCE),
  arXiv:1807.03748, 2018. Radford et al., "Learning Transferable Visual
  Models From Natural Language Supervision" (CLIP), ICML 2021.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from fedjax_mm.models.alignment_metrics import alignment_metrics  # noqa: F401  (re-exported)
from fedjax_mm.models.language import CausalLM, embedding_rms
from fedjax_mm.models.mllm_objectives import MLLM, TokenLayout
from fedjax_mm.models.projector import Projector, layer_inputs
from fedjax_mm.models.vision import ViT
from fedjax_mm.types import Batch, PyTree, Task

OBJECTIVES = ("captioning", "contrastive")


def fedma_task(lm: CausalLM, lm_params: PyTree, *, vis_dim: int, num_vis_tokens: int,
               projector_kind: str = "mlp2x_gelu", pool_to: int | None = None,
               hidden_dim: int | None = None, objective: str = "captioning",
               temperature: float = 0.07, attribute_names: Sequence[str] = (),
               layout: TokenLayout = TokenLayout(), output_scale: float | None = None,
               lm_width: int | None = None) -> Task:
  """The Fed-MA task: train a projector into a frozen LM on cached features.

  Args:
    lm: the frozen LM's module; ``lm_params`` its (inner) params.
    lm_params: frozen LM params (``variables['params']``).
    vis_dim, num_vis_tokens: ``Dv`` and ``N`` of the cached features.
    projector_kind: ``'linear'`` or ``'mlp2x_gelu'``.
    pool_to: average-pool the visual tokens to this many (``None``: keep N).
    hidden_dim: ``mlp2x_gelu`` hidden width (``None``: LM width).
    objective: ``'captioning'`` (LLaVA stage-1) or ``'contrastive'``.
    temperature: InfoNCE temperature (contrastive only).
    attribute_names: attribute index -> name, for ``acc_<name>`` metrics.
    layout: the LM's special tokens around image and caption.
    output_scale: projector output scale at init; ``None`` uses the RMS of
      the LM's token embeddings.
    lm_width: the LM's embedding width (``None``: ``lm.width``).

  Returns:
    A :class:`Task` with ``trainable = {'projector': params}`` and ``frozen =
    {'lm': lm_params}``; its ``linear_inputs`` gives the projector layers'
    input rows (:func:`~fedjax_mm.models.projector.layer_inputs`).
    ``per_example_loss`` is 0 for ``has_caption=False`` rows: the caller must
    fold ``has_caption`` into the batch mask so those rows do not dilute the
    mean. Metrics (both objectives): ``loss`` (caption
    NLL per token), ``accuracy`` and ``acc_<name>``/``n_<name>`` from ranking
    ``probes`` by total NLL (captioning) or by similarity (contrastive).
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
  if output_scale is None:
    output_scale = float(embedding_rms(lm_params))
  projector = Projector(kind=projector_kind, out_dim=lm_width or lm.width,
                        hidden_dim=hidden_dim, pool_to=pool_to, output_scale=output_scale)
  model = MLLM(lm=lm, projector=projector, layout=layout)
  score = "nll" if objective == "captioning" else "similarity"

  def init_trainable(key: jax.Array) -> PyTree:
    dummy = jnp.zeros((1, num_vis_tokens, vis_dim), jnp.float32)
    return {"projector": projector.init(key, dummy)["params"]}

  def per_example_loss(trainable: PyTree, frozen: PyTree, batch: Batch) -> jax.Array:
    if objective == "captioning":
      return model.captioning_loss(trainable["projector"], frozen["lm"], batch)
    return model.contrastive_loss(trainable["projector"], frozen["lm"], batch,
                                  temperature=temperature)

  def per_example_metrics(trainable: PyTree, frozen: PyTree, batch: Batch):
    return model.metrics(trainable["projector"], frozen["lm"], batch,
                         attribute_names=tuple(attribute_names), score=score)

  def linear_inputs(trainable: PyTree, frozen: PyTree, batch: Batch):
    del frozen
    inputs = layer_inputs(projector_kind, pool_to, trainable["projector"], batch["vis"])
    return {f"projector/{name}/kernel": x for name, x in inputs.items()}

  return Task(init_trainable=init_trainable, frozen={"lm": lm_params},
              per_example_loss=per_example_loss, per_example_metrics=per_example_metrics,
              linear_inputs=linear_inputs)


@functools.partial(jax.jit, static_argnames=("vit", "dtype"))
def _encode_batches(vit: ViT, vit_params: PyTree, images: jax.Array, dtype) -> jax.Array:
  def encode(x: jax.Array) -> jax.Array:
    return vit.apply({"params": vit_params}, x.astype(jnp.float32) / 255.0).astype(dtype)
  return jax.lax.map(encode, images)


def encode_images(vit: ViT, vit_params: PyTree, images: jax.Array, batch_size: int = 256,
                  dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """Cached vision features: uint8 ``[N, 32, 32, 3]`` -> ``[N, N_tokens, Dv]``.

  One compiled program maps the ViT over ``ceil(N / batch_size)`` batches
  (``lax.map``); the last batch is zero-padded and the padding dropped.
  Features are computed in float32 and cast to ``dtype`` (bfloat16 halves the
  cache).
  """
  n = images.shape[0]
  num_batches = max(-(-n // batch_size), 1)
  pad = num_batches * batch_size - n
  images = jnp.pad(jnp.asarray(images), ((0, pad), (0, 0), (0, 0), (0, 0)))
  images = images.reshape((num_batches, batch_size) + images.shape[1:])
  out = _encode_batches(vit, vit_params, images, jnp.dtype(dtype))
  return out.reshape((num_batches * batch_size,) + out.shape[2:])[:n]
