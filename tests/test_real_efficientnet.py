"""Tests of the torch-free legacy checkpoint reader and the EfficientNet-Lite0 tower."""

from __future__ import annotations

import collections
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm.real import assets
from fedjax_mm.real import efficientnet
from fedjax_mm.real import torch_pickle
from real_fixtures import LegacyPickler, Storage, Tensor, write_legacy  # tests/ is on sys.path

def test_reader_reproduces_hand_built_file(tmp_path):
  floats = np.arange(24, dtype=np.float32) * 0.5 - 3.0
  longs = np.array([7, -2, 2**40], dtype=np.int64)
  a, b = Storage("0", floats, "FloatStorage"), Storage("1", longs, "LongStorage")
  state = collections.OrderedDict([
      ("w", Tensor(a, 0, (2, 3, 4), (12, 4, 1))),
      ("w_t_offset", Tensor(a, 5, (3, 2), (1, 6))),   # transposed view at offset 5
      ("n", Tensor(b, 2, (), ())),                    # 0-d tensor
  ])
  path = tmp_path / "tiny.pth"
  write_legacy(path, state, [a, b])
  got = torch_pickle.load(path)
  assert list(got) == ["w", "w_t_offset", "n"]
  np.testing.assert_array_equal(got["w"], floats.reshape(2, 3, 4))
  np.testing.assert_array_equal(got["w_t_offset"], floats[5:17].reshape(2, 6)[:, :3].T)
  assert got["w_t_offset"].flags["C_CONTIGUOUS"] and got["n"].shape == () and got["n"] == 2**40
  assert got["w"].dtype == np.float32 and got["n"].dtype == np.int64


def test_reader_refuses_unlisted_globals(tmp_path):
  path = tmp_path / "evil.pth"
  with open(path, "wb") as f:
    pickle.dump(torch_pickle.MAGIC_NUMBER, f, protocol=2)
    pickle.dump(torch_pickle.PROTOCOL_VERSION, f, protocol=2)
    pickle.dump({"little_endian": True}, f, protocol=2)
    LegacyPickler(f, protocol=2).dump(
        {"x": Tensor(Storage("0", np.zeros(1, np.float32), "FloatStorage"), 0, (1,), (1,))})
    f.write(pickle.PROTO + b"\x02" + pickle.GLOBAL + b"os\nsystem\n" + pickle.STOP)
  with pytest.raises(torch_pickle.UnsafePickleError, match=r"os\.system"):
    torch_pickle.load(path)
  with open(path, "wb") as f:            # also in the state-dict pickle itself
    f.write(pickle.PROTO + b"\x02" + pickle.GLOBAL + b"builtins\neval\n" + pickle.STOP)
  with pytest.raises(torch_pickle.UnsafePickleError, match=r"builtins\.eval"):
    torch_pickle.load(path)


# --- the real checkpoint --------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint():
  try:
    path = assets.path("efficientnet_lite0")
  except FileNotFoundError as e:
    pytest.skip(str(e))
  state = torch_pickle.load(path)
  return state, efficientnet.load_params(path)


def test_state_dict_layout(checkpoint):
  state, variables = checkpoint
  assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
  assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
  assert state["_fc.weight"].shape == (1000, 1280)
  # Folded batch norms: 4.63M conv/dense weights and biases.
  assert 4_600_000 < efficientnet.num_params(variables) < 4_700_000


def test_same_padding_amounts():
  assert efficientnet.pad_amounts(224, 3, 2, "same") == (0, 1)
  assert efficientnet.pad_amounts(56, 5, 2, "same") == (1, 2)
  assert efficientnet.pad_amounts(7, 5, 1, "same") == (2, 2)
  assert efficientnet.pad_amounts(224, 3, 2, "symmetric") == (1, 1)


def _reference_conv(x, w_oihw, stride, pads, groups):
  """Direct NumPy cross-correlation, ``x`` HWC, torch ``OIHW`` weight with groups."""
  xp = np.pad(x, (*pads, (0, 0)))
  o, i_per_group, k, _ = w_oihw.shape
  w = w_oihw.reshape(groups, o // groups, i_per_group, k, k)
  oh, ow = (xp.shape[0] - k) // stride + 1, (xp.shape[1] - k) // stride + 1
  out = np.zeros((oh, ow, o))
  for y in range(oh):
    for xx in range(ow):
      patch = xp[y * stride:y * stride + k, xx * stride:xx * stride + k]   # (k, k, C)
      patch = patch.reshape(k, k, groups, i_per_group)
      out[y, xx] = np.einsum("hwgi,goihw->go", patch, w).reshape(o)
  return out


@pytest.mark.parametrize("layer, conv, bn, kernel, stride, groups", [
    ("stem", "_conv_stem", "_bn0", 3, 2, 1),
    ("block_3/depthwise", "_blocks.3._depthwise_conv", "_blocks.3._bn1", 5, 2, 144),
])
def test_conv_layout_and_padding_match_numpy(checkpoint, layer, conv, bn, kernel, stride, groups):
  """Real weights on an even-sized input, where TF SAME and k//2 padding differ."""
  state, variables = checkpoint
  w = state[f"{conv}.weight"]
  x = np.random.default_rng(0).normal(size=(10, 10, w.shape[1] * groups)).astype(np.float32)
  params = variables["params"]
  for part in layer.split("/"):
    params = params[part]

  class Layer(nn.Module):
    @nn.compact
    def __call__(self, h):
      return efficientnet._conv(h, w.shape[0], kernel, stride, "same", "c",
                                depthwise=groups > 1)

  got = np.asarray(jax.jit(Layer().apply)({"params": {"c": params}}, jnp.asarray(x)[None]))[0]
  g, beta = state[f"{bn}.weight"], state[f"{bn}.bias"]
  scale = g / np.sqrt(state[f"{bn}.running_var"] + efficientnet.BN_EPS)
  bias = beta - state[f"{bn}.running_mean"] * scale
  pads = [efficientnet.pad_amounts(10, kernel, stride, "same")] * 2
  want = _reference_conv(x, w, stride, pads, groups) * scale + bias
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  sym = _reference_conv(x, w, stride, [(kernel // 2,) * 2] * 2, groups) * scale + bias
  assert np.abs(got - sym).max() > 1e-2        # the check can tell the paddings apart


def test_photos_classified(checkpoint):
  skdata = pytest.importorskip("skimage.data")
  _, variables = checkpoint
  labels = efficientnet.imagenet_labels()
  assert labels[281].startswith("tabby") and labels[967] == "espresso"
  # Bundled in the scikit-image wheel (no download): RGB, RGB, and a grey photo.
  photos = [skdata.chelsea(), skdata.coffee(), skdata.camera()]
  x = jnp.concatenate([efficientnet.preprocess(jnp.asarray(p)[None]) for p in photos])
  assert x.shape == (3, 224, 224, 3) and x.dtype == jnp.float32
  probs = np.asarray(jax.nn.softmax(efficientnet.classify(variables, x)))
  top = probs.argmax(-1)
  assert 281 <= top[0] <= 285 and probs[0, 281:286].sum() > 0.8     # a cat (Egyptian)
  assert top[1] == 967 and probs[1, 967] > 0.8                      # espresso
  assert top[2] == 872 and probs[2, 872] > 0.8                      # tripod (cameraman)


def test_features_and_encode_pooling(checkpoint):
  skdata = pytest.importorskip("skimage.data")
  _, variables = checkpoint
  photos = np.stack([skdata.chelsea()[:300, 75:375], skdata.coffee()[50:350, 150:450],
                     skdata.astronaut()[100:400, 100:400]])
  # Chunks of 3 at 224px: the forward compiled by test_photos_classified.
  tokens = efficientnet.encode(variables, photos, batch_size=3)
  assert tokens.shape == (3, 49, 1280) and tokens.dtype == np.float32
  maps = tokens.reshape(3, 7, 7, 1280)
  assert (maps >= 0).all() and (maps <= 6).all()                    # ReLU6 outputs
  # Global pooling + the classifier reproduces the logits of the full model.
  dense = variables["params"]["classifier"]
  logits = tokens.mean(1) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
  assert 281 <= logits[0].argmax() <= 285 and logits[1].argmax() == 967
  direct = efficientnet.classify(variables, efficientnet.preprocess(jnp.asarray(photos)))
  np.testing.assert_allclose(logits, direct, rtol=1e-3, atol=1e-3)
  # Adaptive pooling with torch's bins: 7 -> 2 averages rows/cols 0-3 and 3-6.
  pooled = np.asarray(efficientnet.adaptive_avg_pool(jnp.asarray(maps), 2))
  np.testing.assert_allclose(pooled[:, 1, 0], maps[:, 3:7, 0:4].mean((1, 2)), rtol=1e-5, atol=1e-6)
  one = np.asarray(efficientnet.adaptive_avg_pool(jnp.asarray(maps), 1))
  np.testing.assert_allclose(one[:, 0, 0], tokens.mean(1), rtol=1e-5, atol=1e-6)
  four = efficientnet.encode(variables, np.concatenate([photos, photos[:1]]), pool_to=4,
                            batch_size=3)                           # 2 chunks, last padded
  assert four.shape == (4, 4, 1280)
  np.testing.assert_allclose(four[:3], pooled.reshape(3, 4, 1280), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(four[3], four[0], rtol=1e-5, atol=1e-5)
  for bad in (5, 64, 0):
    with pytest.raises(ValueError, match="pool_to"):
      efficientnet.encode(variables, photos[:1], pool_to=bad)
