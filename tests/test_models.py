"""Tests of the Fed-MA model side: ViT, causal LM, projector, objectives."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import FAST
from fedjax_mm.models import mllm, vision
from fedjax_mm.models.language import BOS, EOS, PAD, SEP, CausalLM, embedding_rms
from fedjax_mm.models.projector import Projector, pool_tokens
from fedjax_mm.models.vision import ViT, ViTClassifier

# Every program here is tiny: compiled fast (tests/conftest.py's FAST).
jit = functools.partial(jax.jit, **FAST)
V, D, DV, N = 20, 16, 8, 16
LM = CausalLM(vocab_size=V, width=D, depth=2, num_heads=2, mlp_dim=32, max_len=40)
VIT = ViT(patch_size=8, width=DV, depth=1, num_heads=2, mlp_dim=16)
ATTRS = ("shape", "color", "size")
_lm_apply = jit(LM.apply, static_argnames=("method",))


@pytest.fixture(scope="module")
def lm_params():
  params = jit(LM.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  # Larger embeddings than the 0.02 init so the LM's outputs depend visibly on
  # its inputs (a stand-in for a trained LM).
  return jax.tree.map(lambda p: p * 20.0 if p.ndim == 2 and p.shape[0] in (V, 40) else p, params)


def _batch(key: jax.Array, b: int = 4, l: int = 7) -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(key)
  words = np.asarray(jax.random.randint(k2, (b, l), 5, V), np.int32)
  lengths = np.array([3, 5, 1, 6, 2, 4, 5, 3])[:b]
  tokens = np.zeros((b, l), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = words[i, :n]
    tokens[i, n] = EOS
  return {"vis": jax.random.normal(k1, (b, N, DV)), "tokens": jnp.asarray(tokens),
          "has_caption": jnp.ones((b,), jnp.bool_)}


def _task(lm_params, **kw):
  task = mllm.fedma_task(LM, lm_params, vis_dim=DV, num_vis_tokens=N,
                         attribute_names=ATTRS, **kw)
  # Jitted: eager flax dispatches op by op, which dominates these tiny tests.
  # (Plain jax.jit: these are also called inside other jits, where compiler
  # options are refused.)
  return task._replace(init_trainable=jax.jit(task.init_trainable),
                       per_example_loss=jax.jit(task.per_example_loss),
                       per_example_metrics=jax.jit(task.per_example_metrics))


def test_vit_shapes():
  # Shapes only: eval_shape traces without computing (fast).
  images = jnp.zeros((2, 32, 32, 3))
  for patch, tokens in ((8, 16), (4, 64)):
    for stem in ("patch", "overlap", "conv"):
      vit = ViT(patch_size=patch, width=DV, depth=1, num_heads=2, mlp_dim=16, stem=stem)
      params = jax.eval_shape(vit.init, jax.random.key(0), images)
      assert jax.eval_shape(vit.apply, params, images).shape == (2, tokens, DV)
      assert vit.num_tokens == tokens
  with pytest.raises(ValueError):
    jax.eval_shape(ViT(stem="nope").init, jax.random.key(0), images)
  clf = ViTClassifier(VIT, (("shape", 6), ("color", 8)))
  out = jax.eval_shape(clf.apply, jax.eval_shape(clf.init, jax.random.key(0), images), images)
  assert {k: v.shape for k, v in out.items()} == {"shape": (2, 6), "color": (2, 8)}


def test_patch_embeddings_are_convolutions():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  k3 = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
  k4 = jax.random.normal(jax.random.key(2), (4, 4, 3, 5))
  k8 = jax.random.normal(jax.random.key(3), (8, 8, 3, 5))

  @jit  # one program: eagerly, every op of the patch extraction compiles on its own
  def pairs(x, k3, k4, k8):
    conv = lambda k, stride, pad: jax.lax.conv_general_dilated(
        x, k, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # Overlapping windows: centred on the stride grid, zero padded.
    patches = vision.extract_patches(x, 8, 4)
    return [
        (vision._im2col_3x3_stride2(x) @ k3.reshape(27, 5), conv(k3, 2, [(1, 1), (1, 1)])),
        (vision.extract_patches(x, 4, 4) @ k4.reshape(48, 5), conv(k4, 4, "VALID")),
        (patches @ jnp.transpose(k8, (2, 0, 1, 3)).reshape(192, 5),  # (C, kh, kw) order
         conv(k8, 4, [(2, 2), (2, 2)]))]

  assert jax.eval_shape(lambda x: vision.extract_patches(x, 8, 4), x).shape == (2, 4, 4, 192)
  for got, want in pairs(x, k3, k4, k8):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_lm_shapes_and_causality(lm_params):
  tokens = jax.random.randint(jax.random.key(1), (2, 10), 5, V)
  logits = _lm_apply({"params": lm_params}, tokens)
  assert logits.shape == (2, 10, V)
  emb = _lm_apply({"params": lm_params}, tokens, method=CausalLM.embed)
  logits2, hidden = _lm_apply({"params": lm_params}, emb, method=CausalLM.forward_embeddings)
  assert emb.shape == hidden.shape == (2, 10, D)
  np.testing.assert_allclose(logits, logits2, rtol=1e-6, atol=1e-6)
  changed = _lm_apply({"params": lm_params}, tokens.at[:, 6].set(4))
  np.testing.assert_allclose(logits[:, :6], changed[:, :6], rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits[:, 6:], changed[:, 6:])


def test_captioning_loss_matches_numpy(lm_params):
  task = _task(lm_params)
  trainable = task.init_trainable(jax.random.key(2))
  batch = _batch(jax.random.key(3))
  got = np.asarray(task.per_example_loss(trainable, task.frozen, batch))
  # By hand: [BOS] + projector(vis) + embed([SEP, w1 .. wk]) -> logits.
  proj = Projector(out_dim=D, output_scale=embedding_rms(lm_params).item())
  prefix = jit(proj.apply)({"params": trainable["projector"]}, batch["vis"])
  tokens = np.asarray(batch["tokens"])
  b, l = tokens.shape
  text_in = np.concatenate([np.full((b, 1), SEP), tokens[:, :-1]], 1)
  bos = _lm_apply({"params": lm_params}, jnp.full((b, 1), BOS), method=CausalLM.embed)
  emb = _lm_apply({"params": lm_params}, jnp.asarray(text_in), method=CausalLM.embed)
  seq = jnp.concatenate([bos, prefix, emb], 1)
  logits, _ = _lm_apply({"params": lm_params}, seq, method=CausalLM.forward_embeddings)
  logits = np.asarray(logits, np.float64)
  for i in range(b):
    nll = []
    for j in range(l):
      if tokens[i, j] == PAD:
        break
      row = logits[i, 1 + N + j]  # position of SEP + j predicts tokens[i, j]
      nll.append(np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[tokens[i, j]])
    assert tokens[i, len(nll) - 1] == EOS  # EOS is a target too
    np.testing.assert_allclose(got[i], np.mean(nll), rtol=1e-5)


def test_token_layout_no_bos_two_sep_tokens(lm_params):
  # A real LM's layout: no BOS, a two-token prompt between image and caption,
  # a pad id that is not 0 (0 here is an ordinary word, and must be scored).
  layout = mllm.TokenLayout(bos=None, sep=(7, 9), pad=11)
  task = _task(lm_params, layout=layout)
  trainable = task.init_trainable(jax.random.key(2))
  batch = _batch(jax.random.key(3))
  tokens = np.asarray(batch["tokens"]).copy()
  tokens[tokens == 11] = 12              # word 11 becomes the pad id
  tokens[tokens == PAD] = 11
  tokens[:, 0] = 0                       # word 0 (= synthetic PAD) is a real target now
  got = np.asarray(task.per_example_loss(trainable, task.frozen, dict(batch, tokens=tokens)))
  proj = Projector(out_dim=D, output_scale=embedding_rms(lm_params).item())
  prefix = jit(proj.apply)({"params": trainable["projector"]}, batch["vis"])
  b, l = tokens.shape
  text_in = np.concatenate([np.tile([7, 9], (b, 1)), tokens[:, :-1]], 1)
  emb = _lm_apply({"params": lm_params}, jnp.asarray(text_in), method=CausalLM.embed)
  logits, _ = _lm_apply({"params": lm_params}, jnp.concatenate([prefix, emb], 1),
                        method=CausalLM.forward_embeddings)
  logits = np.asarray(logits, np.float64)
  for i in range(b):
    n = int(np.sum(tokens[i] != 11))
    rows = logits[i, N + 1:N + 1 + n]    # the second sep token's output predicts w1
    lse = np.log(np.sum(np.exp(rows - rows.max(-1, keepdims=True)), -1)) + rows.max(-1)
    np.testing.assert_allclose(got[i], np.mean(lse - rows[np.arange(n), tokens[i, :n]]),
                               rtol=1e-5)
  with pytest.raises(ValueError, match="sep"):
    mllm.TokenLayout(sep=())


def test_loss_ignores_pad_and_missing_captions(lm_params):
  task = _task(lm_params)
  trainable = task.init_trainable(jax.random.key(2))
  batch = _batch(jax.random.key(3))
  base = task.per_example_loss(trainable, task.frozen, batch)
  longer = dict(batch, tokens=jnp.pad(batch["tokens"], ((0, 0), (0, 5))))
  np.testing.assert_allclose(task.per_example_loss(trainable, task.frozen, longer), base,
                             rtol=1e-5)
  missing = dict(batch, has_caption=jnp.array([True, False, True, False]))
  loss = task.per_example_loss(trainable, task.frozen, missing)
  np.testing.assert_array_equal(np.asarray(loss)[[1, 3]], 0.0)
  np.testing.assert_allclose(np.asarray(loss)[[0, 2]], np.asarray(base)[[0, 2]], rtol=1e-6)
  # A row without caption contributes no gradient.
  grad = jit(lambda b: jax.grad(lambda t: task.per_example_loss(t, task.frozen, b)[1])(
      trainable))
  assert all(np.all(g == 0) for g in jax.tree.leaves(grad(missing)))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grad(batch)))


def test_trainable_is_only_the_projector(lm_params):
  for kind in ("linear", "mlp2x_gelu"):
    task = _task(lm_params, projector_kind=kind)
    trainable = task.init_trainable(jax.random.key(0))
    assert list(trainable) == ["projector"]
    names = {"linear": {"out"}, "mlp2x_gelu": {"fc1", "out"}}[kind]
    assert set(trainable["projector"]) == names
    assert list(task.frozen) == ["lm"]
    batch = _batch(jax.random.key(1))
    grads = jax.eval_shape(jax.grad(
        lambda t: task.per_example_loss(t, task.frozen, batch).mean()), trainable)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    opt_leaves = jax.tree.leaves(optax.adam(1e-3).init(trainable))
    assert len(opt_leaves) == 1 + 2 * len(jax.tree.leaves(trainable))


def test_projector_init_scale_and_pooling():
  vis = jax.random.normal(jax.random.key(0), (64, N, 32))
  for kind in ("linear", "mlp2x_gelu"):
    proj = Projector(kind=kind, out_dim=64, output_scale=0.1)
    out = jit(proj.apply)(jit(proj.init)(jax.random.key(1), vis), vis)
    assert out.shape == (64, N, 64)
    rms = float(jnp.sqrt(jnp.mean(jnp.square(out))))
    assert 0.07 < rms < 0.14, (kind, rms)  # unit-scale inputs -> about output_scale
    pooled = Projector(kind=kind, out_dim=64, pool_to=4)
    variables = jax.eval_shape(pooled.init, jax.random.key(1), vis)
    assert jax.eval_shape(pooled.apply, variables, vis).shape == (64, 4, 64)


def test_pool_tokens():
  x = jnp.arange(2 * 16 * 3, dtype=jnp.float32).reshape(2, 16, 3)
  pooled = pool_tokens(x, 4)
  grid = np.asarray(x).reshape(2, 4, 4, 3)
  np.testing.assert_allclose(pooled[:, 0], grid[:, :2, :2].mean((1, 2)))  # top-left 2x2
  np.testing.assert_allclose(pooled[:, 3], grid[:, 2:, 2:].mean((1, 2)))
  assert pool_tokens(jnp.zeros((2, 64, 3)), 16).shape == (2, 16, 3)
  assert pool_tokens(jnp.zeros((2, 64, 3)), 1).shape == (2, 1, 3)
  assert pool_tokens(x, None) is x
  np.testing.assert_allclose(pool_tokens(jnp.arange(6.0).reshape(1, 6, 1), 3)[0, :, 0],
                             [0.5, 2.5, 4.5])  # not square: consecutive runs
  with pytest.raises(ValueError):
    pool_tokens(x, 5)


def test_alignment_metrics_rigged():
  names = ("shape", "color")
  scores = jnp.array([[1.0, 2.0, 3.0, 9.0],    # true beats all
                      [5.0, 2.0, 6.0, 9.0],    # loses to the shape candidate
                      [5.0, 6.0, 4.0, 1.0],    # loses to color; slot 3 is padding
                      [5.0, 5.0, 6.0, 6.0]])   # tie with shape counts as a loss
  attr = jnp.array([[-1, 0, 1, 1], [-1, 0, 1, -2], [-1, 0, 1, -2], [-1, 0, 1, -2]])
  out = mllm.alignment_metrics(scores, attr, names)
  np.testing.assert_array_equal(out["accuracy"], [1, 0, 0, 0])
  np.testing.assert_array_equal(out["acc_shape"], [1, 0, 1, 0])
  np.testing.assert_array_equal(out["acc_color"], [1, 1, 0, 1])
  np.testing.assert_array_equal(out["n_shape"], [1, 1, 1, 1])


def test_probe_metrics_end_to_end(lm_params):
  task = _task(lm_params)
  trainable = task.init_trainable(jax.random.key(2))
  batch = _batch(jax.random.key(3))
  tokens = batch["tokens"]
  # Candidates: the true caption, a copy (a tie: not beaten), and captions
  # with one word changed.
  changed = tokens.at[:, 0].set((tokens[:, 0] - 4) % (V - 5) + 5)
  changed2 = tokens.at[:, 0].set((tokens[:, 0] - 3) % (V - 5) + 5)
  probes = jnp.stack([tokens, changed, changed2, tokens], 1)
  batch = dict(batch, probes=probes, probe_attr=jnp.tile(jnp.array([[-1, 0, 1, 2]]), (4, 1)))
  model = mllm.MLLM(LM, Projector(out_dim=D, output_scale=embedding_rms(lm_params).item()))
  scores = jit(model.probe_scores, static_argnums=3)(
      trainable["projector"], lm_params, batch, "nll")
  caption_loss = jit(model.captioning_loss)
  for p in range(4):
    caption = caption_loss(trainable["projector"], lm_params, dict(batch, tokens=probes[:, p]))
    np.testing.assert_allclose(scores[:, p], caption * jnp.sum(probes[:, p] != PAD, -1), rtol=1e-5)
  metrics = task.per_example_metrics(trainable, task.frozen, batch)
  expected = mllm.alignment_metrics(scores, batch["probe_attr"], ATTRS)
  for k, v in expected.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5)
  # The loss metric (read off probe 0 in the same pass) is the caption loss.
  np.testing.assert_allclose(metrics["loss"], caption_loss(trainable["projector"], lm_params,
                                                           batch), rtol=1e-5)
  np.testing.assert_array_equal(metrics["accuracy"], 0.0)  # the tie always loses
  np.testing.assert_array_equal(metrics["acc_size"], 0.0)
  assert set(metrics) == {"loss", "accuracy"} | {f"{p}_{a}" for p in ("acc", "n") for a in ATTRS}


def _numpy_infonce(img, txt, temperature, use, allowed):
  img = img / np.linalg.norm(img, axis=-1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
  s = img @ txt.T / temperature
  out = np.zeros(len(img))
  for i in np.flatnonzero(use):
    cols = [j for j in range(len(img)) if use[j] and allowed[i, j]]
    i2t = -s[i, i] + np.log(np.sum(np.exp(s[i, cols])))
    t2i = -s[i, i] + np.log(np.sum(np.exp(s[cols, i])))
    out[i] = 0.5 * (i2t + t2i)
  return out


def test_contrastive_matches_numpy(lm_params):
  task = _task(lm_params, objective="contrastive", temperature=0.5)
  trainable = task.init_trainable(jax.random.key(2))
  batch = _batch(jax.random.key(4), b=6)
  tokens = batch["tokens"].at[5].set(batch["tokens"][0])  # 0 and 5: same caption
  batch = dict(batch, tokens=tokens, has_caption=jnp.array([1, 1, 0, 1, 1, 1], bool),
               valid=jnp.array([1, 1, 1, 1, 0, 1], bool))
  got = np.asarray(task.per_example_loss(trainable, task.frozen, batch))
  model = mllm.MLLM(LM, Projector(out_dim=D, output_scale=embedding_rms(lm_params).item()))
  img = np.asarray(jit(model.image_embedding)(trainable["projector"], batch["vis"]),
                   np.float64)
  txt = np.asarray(jit(model.text_embedding)(lm_params, tokens), np.float64)
  use = np.array([1, 1, 0, 1, 0, 1], bool)
  allowed = np.ones((6, 6), bool)
  allowed[0, 5] = allowed[5, 0] = False
  np.testing.assert_allclose(got, _numpy_infonce(img, txt, 0.5, use, allowed), rtol=1e-4)
  assert got[2] == got[4] == 0.0
  # Text embedding = mean LM hidden state over BOS w1 .. wk EOS.
  seq = np.concatenate([[BOS], np.asarray(tokens[1])])
  emb = _lm_apply({"params": lm_params}, jnp.asarray(seq[None]), method=CausalLM.embed)
  _, hidden = _lm_apply({"params": lm_params}, emb, method=CausalLM.forward_embeddings)
  np.testing.assert_allclose(txt[1], np.asarray(hidden)[0, seq != PAD].mean(0), rtol=1e-5)
  metrics = task.per_example_metrics(trainable, task.frozen, dict(
      batch, probes=jnp.stack([tokens, tokens[::-1]], 1),
      probe_attr=jnp.tile(jnp.array([[-1, 0]]), (6, 1))))
  assert metrics["accuracy"].shape == (6,)


def test_contrastive_client_step_ignores_padded_rows(lm_params):
  # The engine pads a batch with copies of a real row (mask False); the
  # client step must hand its mask to InfoNCE so the copies are not
  # negatives: padded step == step on the real rows alone.
  from fedjax_mm import client
  task = _task(lm_params, objective="contrastive", temperature=0.5)
  trainable = task.init_trainable(jax.random.key(2))
  real = _batch(jax.random.key(5), b=4)
  padded = jax.tree.map(lambda a: jnp.concatenate([a, a[:1], a[:1]]), real)
  mask = jnp.array([1, 1, 1, 1, 0, 0], bool)
  tx = optax.sgd(1.0)
  step = jit(lambda batch, m: client.client_step(
      client.client_init(trainable, tx), batch, m, loss_fn=task.per_example_loss,
      frozen=task.frozen, tx=tx).params)
  want = step(real, jnp.ones((4,), bool))
  got = step(padded, mask)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  # Without the mask the copies would change the update (the test can fail).
  unmasked = step(padded, jnp.ones((6,), bool))
  assert not all(np.allclose(u, w, rtol=1e-5, atol=1e-7)
                 for u, w in zip(jax.tree.leaves(unmasked), jax.tree.leaves(want)))


def test_encode_images_batched_and_bf16():
  images = jax.random.randint(jax.random.key(0), (7, 32, 32, 3), 0, 256).astype(jnp.uint8)
  params = jit(VIT.init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))["params"]
  full = mllm.encode_images(VIT, params, images, batch_size=7)
  assert full.shape == (7, 16, DV) and full.dtype == jnp.float32
  vit_apply = jit(VIT.apply)
  one = jnp.concatenate([vit_apply({"params": params}, images[i:i + 1] / 255.0)
                         for i in range(7)])
  np.testing.assert_allclose(full, one, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mllm.encode_images(VIT, params, images, batch_size=3), full,
                             rtol=1e-5, atol=1e-5)
  half = mllm.encode_images(VIT, params, images, batch_size=3, dtype=jnp.bfloat16)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), full, rtol=2e-2, atol=2e-2)


def test_bf16_features_in_the_loss(lm_params):
  task = _task(lm_params)
  trainable = task.init_trainable(jax.random.key(2))
  batch = _batch(jax.random.key(3))
  f32 = task.per_example_loss(trainable, task.frozen, batch)
  bf16 = task.per_example_loss(trainable, task.frozen,
                               dict(batch, vis=batch["vis"].astype(jnp.bfloat16)))
  np.testing.assert_allclose(bf16, f32, rtol=2e-2)


def test_bad_arguments(lm_params):
  with pytest.raises(ValueError):
    _task(lm_params, objective="nope")
  with pytest.raises(ValueError):
    LM.apply({"params": lm_params}, jnp.zeros((1, 41), jnp.int32))  # > max_len
