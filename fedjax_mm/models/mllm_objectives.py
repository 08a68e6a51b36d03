"""The Fed-MA model: a trained projector into a frozen LM, its objectives and probe scores.

Holds :class:`TokenLayout` and :class:`MLLM` (visual prefix, caption NLL,
captioning and contrastive losses, probe scoring, evaluation metrics); the
task built on it is :func:`fedjax_mm.models.mllm.fedma_task`.

The vision tower's outputs are cached
(:func:`fedjax_mm.models.mllm.encode_images`), so a batch carries features,
not pixels:

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
from typing import Sequence

import jax
import jax.numpy as jnp

from fedjax_mm.models.alignment_metrics import alignment_metrics
from fedjax_mm.models.language import BOS, PAD, SEP, CausalLM
from fedjax_mm.models.projector import Projector
from fedjax_mm.types import Batch, PyTree

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


def _mean_caption_nll(nll: jax.Array, mask: jax.Array, batch: Batch) -> jax.Array:
  """Mean NLL per valid token ``[B]`` of ``[B, L]`` token NLLs; 0 without a caption."""
  per_example = jnp.sum(nll * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
  return jnp.where(_has_caption(batch), per_example, 0.0)


def _has_caption(batch: Batch) -> jax.Array:
  tokens = batch["tokens"]
  return batch.get("has_caption", jnp.ones(tokens.shape[:1], jnp.bool_)).astype(jnp.bool_)


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), 1e-12))
