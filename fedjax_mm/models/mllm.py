"""Fed-MA objectives: a trained projector between a frozen ViT and a frozen LM.

The vision tower's outputs are cached (:func:`encode_images`), so a batch
carries features, not pixels:

* ``batch['vis']``: ``[B, N, Dv]`` float32 or bfloat16 cached ViT tokens;
* ``batch['tokens']``: ``[B, L]`` int32 captions ``w1 .. wk EOS PAD ...``;
* ``batch['has_caption']``: ``[B]`` bool (missing-modality examples);
* optional ``batch['valid']``: ``[B]`` bool, rows that are real examples
  (only the contrastive loss reads it, see :meth:`MLLM.contrastive_loss`);
* evaluation only: ``batch['probes']`` ``[B, P, L]`` int32 candidate captions
  (true caption at index 0, the others differ from it in exactly one
  attribute) and ``batch['probe_attr']`` ``[B, P]`` int32 (the attribute index
  each candidate changed; -1 for the true caption; < -1 marks a padding slot).

Captioning (LLaVA stage-1): the LM reads ``[BOS] + projector(vis) +
embed([SEP, w1 .. wk])`` and is scored on predicting ``w1 .. wk EOS`` —
exactly the ``BOS <caption A> SEP <caption B> EOS`` paraphrase-pair format the
LM was pretrained on, with the visual prefix in the place of caption A. A
:class:`TokenLayout` names those tokens for another LM (a real one puts a
few prompt tokens where SEP is, e.g. ``"\nCaption:"``).

Contrastive (CLIP-style InfoNCE): mean-pooled projected visual tokens against
the frozen LM's mean-pooled hidden states of the caption.

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

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from fedjax_mm.models.language import BOS, PAD, SEP, CausalLM, embedding_rms
from fedjax_mm.models.projector import Projector
from fedjax_mm.models.vision import ViT
from fedjax_mm.types import Batch, PyTree, Task

OBJECTIVES = ("captioning", "contrastive")
# Logit given to excluded pairs: finite (not -inf) so fully masked rows stay
# NaN-free; exp(-1e9) is exactly 0 in float32.
_MASKED_LOGIT = -1e9


def _append_left(front: Sequence[int], tokens: jax.Array) -> jax.Array:
  """``[B, L]`` -> ``[B, len(front) + L]`` with the ``front`` tokens first."""
  lead = jnp.broadcast_to(jnp.asarray(front, tokens.dtype), tokens.shape[:-1] + (len(front),))
  return jnp.concatenate([lead, tokens], -1)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """The special tokens around the visual prefix and the caption.

  The LM reads ``[bos] + projector(vis) + embed(sep + w1 .. wk)`` and is
  scored on ``w1 .. wk eos``; captions are stored as ``w1 .. wk eos pad ..``.

  Attributes:
    bos: token before the visual prefix (``None``: no BOS).
    sep: tokens between the image and the caption (at least one: the last
      one's output predicts ``w1``).
    pad: caption padding, masked out of every loss.
  """

  bos: int | None = BOS
  sep: tuple[int, ...] = (SEP,)
  pad: int = PAD

  def __post_init__(self):
    if not self.sep:
      raise ValueError("TokenLayout.sep: needs at least one token (it predicts the first word)")


@dataclasses.dataclass(frozen=True)
class MLLM:
  """Frozen LM + trainable projector; pure functions of explicit params.

  Attributes:
    lm: the frozen language model's module (``embed`` / ``forward_embeddings``
      as :class:`~fedjax_mm.models.language.CausalLM`).
    projector: the projector module.
    layout: special tokens (default: the synthetic world's LM, BOS before the
      visual prefix and SEP after it, as in its pretraining).
  """

  lm: CausalLM
  projector: Projector
  layout: TokenLayout = TokenLayout()

  def _embed(self, lm_params: PyTree, tokens: jax.Array) -> jax.Array:
    return self.lm.apply({"params": lm_params}, tokens, method=type(self.lm).embed)

  def _forward(self, lm_params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.lm.apply({"params": lm_params}, x, method=type(self.lm).forward_embeddings)

  def prefix(self, proj_params: PyTree, lm_params: PyTree, vis: jax.Array) -> jax.Array:
    """Visual prefix embeddings ``[B, (1 +) N', D]``."""
    x = self.projector.apply({"params": proj_params}, vis)
    if self.layout.bos is not None:
      bos = self._embed(lm_params, jnp.full((x.shape[0], 1), self.layout.bos, jnp.int32))
      x = jnp.concatenate([bos.astype(x.dtype), x], axis=1)
    return x

  def caption_nll(self, prefix: jax.Array, lm_params: PyTree, tokens: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """Per-token NLL of ``tokens`` given a prefix.

    Args:
      prefix: ``[B, P, D]`` from :meth:`prefix`.
      lm_params: frozen LM params.
      tokens: ``[B, L]`` captions ``w1 .. wk EOS PAD ...``.

    Returns:
      ``(nll [B, L], mask [B, L])``: ``nll[b, i]`` is ``-log p(tokens[b, i] |
      prefix, sep, tokens[b, :i])``; ``mask`` is 1.0 on non-pad targets.
    """
    sep = self.layout.sep
    text_in = _append_left(sep, tokens)[:, :-1]
    emb = self._embed(lm_params, text_in)
    seq = jnp.concatenate([prefix, emb.astype(prefix.dtype)], axis=1)
    logits, _ = self._forward(lm_params, seq)
    # The output at the last sep token predicts w1.
    first = prefix.shape[1] + len(sep) - 1
    logits = logits[:, first:first + tokens.shape[1]]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    return nll, (tokens != self.layout.pad).astype(jnp.float32)

  def captioning_loss(self, proj_params: PyTree, lm_params: PyTree, batch: Batch) -> jax.Array:
    """Mean NLL per valid caption token, ``[B]``; 0 where ``has_caption`` is False."""
    nll, mask = self.caption_nll(self.prefix(proj_params, lm_params, batch["vis"]),
                                 lm_params, batch["tokens"])
    return _mean_caption_nll(nll, mask, batch)

  def image_embedding(self, proj_params: PyTree, vis: jax.Array) -> jax.Array:
    """Mean-pooled projected visual tokens ``[B, D]`` (not normalised)."""
    return self.projector.apply({"params": proj_params}, vis).mean(axis=1)

  def text_embedding(self, lm_params: PyTree, tokens: jax.Array) -> jax.Array:
    """Mean of the LM's final hidden states over ``BOS w1 .. wk EOS``, ``[..., D]``."""
    lead = tokens.shape[:-1]
    text = tokens.reshape(-1, tokens.shape[-1])
    if self.layout.bos is not None:
      text = _append_left((self.layout.bos,), text)
    _, hidden = self._forward(lm_params, self._embed(lm_params, text))
    mask = (text != self.layout.pad).astype(hidden.dtype)[..., None]
    pooled = jnp.sum(hidden * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0)
    return pooled.reshape(lead + pooled.shape[-1:])

  def contrastive_loss(self, proj_params: PyTree, lm_params: PyTree, batch: Batch, *,
                       temperature: float = 0.07, symmetric: bool = True) -> jax.Array:
    """Per-example InfoNCE over the batch, ``[B]`` (0 on excluded rows).

    Row ``i`` takes part iff ``has_caption[i]`` and ``valid[i]`` (``valid``
    defaults to all True). Excluded rows are neither anchors nor negatives;
    this matters because the engine pads batches with copies of a real row,
    which would otherwise be false negatives. Pairs whose captions are
    token-for-token identical are not used as negatives either (a small
    world repeats captions within a batch).

    Returns:
      ``0.5 * (image->text CE + text->image CE)`` per row (``symmetric``, as
      CLIP) or image->text CE only; the loss of row ``i`` depends on the
      other rows of the batch.
    """
    tokens = batch["tokens"]
    use = _has_caption(batch) & batch.get("valid", jnp.ones(tokens.shape[:1], jnp.bool_))
    img = _l2_normalize(self.image_embedding(proj_params, batch["vis"]))
    txt = _l2_normalize(self.text_embedding(lm_params, tokens).astype(jnp.float32))
    logits = img @ txt.T / temperature  # [B_image, B_text]
    same_caption = jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)
    eye = jnp.eye(tokens.shape[0], dtype=jnp.bool_)
    allowed = (use[:, None] & use[None, :] & ~same_caption) | eye
    logits = jnp.where(allowed, logits, _MASKED_LOGIT)
    i2t = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
    loss = 0.5 * (i2t - jnp.diagonal(jax.nn.log_softmax(logits, axis=0))) if symmetric else i2t
    return jnp.where(use, loss, 0.0)

  def probe_nll(self, proj_params: PyTree, lm_params: PyTree, batch: Batch
                ) -> tuple[jax.Array, jax.Array]:
    """Per-token NLL ``[B, P, L]`` and target mask of every candidate caption."""
    probes = batch["probes"]
    b, p, l = probes.shape
    prefix = jnp.repeat(self.prefix(proj_params, lm_params, batch["vis"]), p, axis=0)
    nll, mask = self.caption_nll(prefix, lm_params, probes.reshape(b * p, l))
    return nll.reshape(b, p, l), mask.reshape(b, p, l)

  def probe_scores(self, proj_params: PyTree, lm_params: PyTree, batch: Batch, score: str
                   ) -> jax.Array:
    """Candidate scores ``[B, P]``, lower is better.

    ``score='nll'``: total caption NLL given the image; ``'similarity'``:
    minus the cosine similarity of image and caption embeddings.
    """
    probes = batch["probes"]
    if score == "nll":
      nll, mask = self.probe_nll(proj_params, lm_params, batch)
      return jnp.sum(nll * mask, -1)
    if score == "similarity":
      img = _l2_normalize(self.image_embedding(proj_params, batch["vis"]))
      txt = _l2_normalize(self.text_embedding(lm_params, probes).astype(jnp.float32))
      return -jnp.einsum("bd,bpd->bp", img, txt)
    raise ValueError(f"score must be 'nll' or 'similarity', got {score!r}")

  def metrics(self, proj_params: PyTree, lm_params: PyTree, batch: Batch, *,
              attribute_names: Sequence[str] = (), score: str = "nll") -> dict[str, jax.Array]:
    """Per-example evaluation metrics, each ``[B]``; see :func:`alignment_metrics`."""
    if "probes" in batch and score == "nll":
      # Probe 0 is the true caption: its NLL is the caption loss, so one LM
      # pass over the candidates gives both (a seventh pass would repeat it).
      nll, mask = self.probe_nll(proj_params, lm_params, batch)
      out = {"loss": _mean_caption_nll(nll[:, 0], mask[:, 0], batch)}
      out.update(alignment_metrics(jnp.sum(nll * mask, -1), batch["probe_attr"],
                                   attribute_names))
      return out
    out = {"loss": self.captioning_loss(proj_params, lm_params, batch)}
    if "probes" in batch:
      scores = self.probe_scores(proj_params, lm_params, batch, score)
      out.update(alignment_metrics(scores, batch["probe_attr"], attribute_names))
    return out


def alignment_metrics(scores: jax.Array, probe_attr: jax.Array,
                      attribute_names: Sequence[str] = ()) -> dict[str, jax.Array]:
  """Zero-shot caption-ranking accuracies from candidate scores.

  Args:
    scores: ``[B, P]``, lower is better; index 0 is the true caption.
    probe_attr: ``[B, P]`` attribute index changed by each candidate (-1 for
      the true caption, < -1 for a padding slot, which is ignored).
    attribute_names: names of attribute indices 0, 1, ...

  Returns:
    ``accuracy``: 1.0 iff the true caption scores strictly lower than every
    real candidate. For each attribute ``a`` (name ``n``): ``acc_n``, the
    fraction of candidates that changed ``a`` the true caption beats (pairwise
    accuracy), and ``n_n``, 1.0 if the example has such a candidate (0 makes
    ``acc_n`` 0): the exact mean over examples is ``sum(acc_n) / sum(n_n)``.
  """
  beats = scores[:, :1] < scores[:, 1:]
  attr = probe_attr[:, 1:]
  real = attr >= 0
  out = {"accuracy": jnp.all(beats | ~real, axis=-1).astype(jnp.float32)}
  for a, name in enumerate(attribute_names):
    has = (attr == a).astype(jnp.float32)
    count = jnp.sum(has, -1)
    out[f"acc_{name}"] = jnp.sum(beats * has, -1) / jnp.maximum(count, 1.0)
    out[f"n_{name}"] = (count > 0).astype(jnp.float32)
  return out


def _mean_caption_nll(nll: jax.Array, mask: jax.Array, batch: Batch) -> jax.Array:
  """Mean NLL per valid token ``[B]`` of ``[B, L]`` token NLLs; 0 without a caption."""
  per_example = jnp.sum(nll * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
  return jnp.where(_has_caption(batch), per_example, 0.0)


def _has_caption(batch: Batch) -> jax.Array:
  tokens = batch["tokens"]
  return batch.get("has_caption", jnp.ones(tokens.shape[:1], jnp.bool_)).astype(jnp.bool_)


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), 1e-12))


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
    {'lm': lm_params}``. ``per_example_loss`` is 0 for ``has_caption=False``
    rows: the caller must fold ``has_caption`` into the batch mask so those
    rows do not dilute the mean. Metrics (both objectives): ``loss`` (caption
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

  return Task(init_trainable=init_trainable, frozen={"lm": lm_params},
              per_example_loss=per_example_loss, per_example_metrics=per_example_metrics)


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
