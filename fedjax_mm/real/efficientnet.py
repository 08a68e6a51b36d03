"""EfficientNet-Lite0 (ImageNet-1k) as a frozen JAX/Flax vision tower.

EfficientNet-Lite is EfficientNet-B0 made integer-quantisation friendly: no
squeeze-and-excitation, ReLU6 instead of swish, and the stem and head kept at
32 and 1280 channels. The body is a stack of MobileNetV2 inverted residuals
(MBConv: 1x1 expansion, depthwise kxk, linear 1x1 projection, identity skip
when the shape is kept). 4.65M parameters (4.63M with batch norms folded),
224x224 RGB input.

The weights are the ``efficientnet-lite0-57934424.pth`` state dict (a conversion
of the TensorFlow checkpoint, keys named as in EfficientNet-PyTorch:
``_conv_stem``/``_bn0``, ``_blocks.{i}._expand_conv|_depthwise_conv|_project_conv``
with ``_bn0|_bn1|_bn2``, ``_conv_head``/``_bn1``, ``_fc``), read without torch by
:mod:`fedjax_mm.real.torch_pickle`. The tower is inference-only, so
:func:`load_params` folds every batch norm (running statistics, eps 1e-3) into
the preceding bias-free convolution: ``w * g / sqrt(v + eps)`` and bias
``b - m * g / sqrt(v + eps)``; the module is then convolutions with biases only.

Padding: the original TensorFlow model uses ``SAME`` padding, which for the
stride-2 layers on even inputs (224, 112, 56, 28, 14) pads one pixel *less* at
the top/left than the symmetric ``k // 2`` padding of PyTorch-style ports; both
give the 7x7 final map. Measured on 128 random crops/flips of four bundled
scikit-image photos with known classes, ``"same"`` gives the ground-truth
classes more probability (cat/espresso/tripod: 0.915/0.937/0.907 against
0.887/0.892/0.847 with ``"symmetric"``; mean paired log-probability +0.043 +/-
0.031 s.e.) and lower prediction entropy (1.51 against 1.66 nats), so
``padding="same"`` is the default. The margin is modest: the symmetric model is
still a good classifier (a 1-pixel shift of the stride-2 sampling grids).

Input normalisation is EfficientNet-Lite's: ``(x - 127) / 128`` for ``x`` in
``[0, 255]`` (:func:`preprocess`); ImageNet mean/std instead gives the same
top-1 on the bundled photos but lower confidence. :func:`encode` turns uint8
images into 49 visual tokens (the 7x7 final feature map, row-major) or fewer by
adaptive average pooling.

References:
  Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
  Networks", ICML 2019; arXiv:1905.11946. EfficientNet-Lite: TensorFlow TPU
  repository, ``models/official/efficientnet/lite`` (2020). Sandler et al.,
  "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018;
  arXiv:1801.04381.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mm.real import assets
from fedjax_mm.real import torch_pickle

IMAGE_SIZE = 224
FEATURE_DIM = 1280
GRID = 7                 # final feature map side at 224px (stride 32)
BN_EPS = 1e-3
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
PADDINGS = ("same", "symmetric")
# (expand ratio, kernel, stride, output channels, repeats) per stage.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS = 32


def pad_amounts(size: int, kernel: int, stride: int, mode: str) -> tuple[int, int]:
  """(before, after) padding of one spatial axis.

  ``"same"`` is TensorFlow's: total ``max((ceil(size / s) - 1) s + k - size, 0)``,
  the odd pixel going after (bottom/right). ``"symmetric"`` is ``k // 2`` each side.
  """
  if mode == "symmetric":
    return kernel // 2, kernel // 2
  if mode != "same":
    raise ValueError(f"padding must be one of {PADDINGS}, got {mode!r}")
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
  """Depthwise kxk convolution + bias, params laid out as ``nn.Conv``'s grouped conv.

  ``kernel`` is ``(k, k, 1, C)`` and ``bias`` ``(C,)``, exactly what
  ``nn.Conv(C, (k, k), feature_group_count=C)`` would hold, but the op is a sum
  of ``k * k`` strided slices times per-channel weights: XLA:CPU runs grouped
  convolutions 5-25x slower than this (measured on [8, 112, 112, 96], 3x3/2 and
  [8, 14, 14, 672], 5x5/1), which made depthwise layers most of the forward time.
  """

  kernel_size: int
  stride: int
  pads: tuple[tuple[int, int], tuple[int, int]]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s, c = self.kernel_size, self.stride, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    x = jnp.pad(x, ((0, 0), *self.pads, (0, 0)))
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    out = bias
    for dy in range(k):
      for dx in range(k):
        window = x[:, dy:dy + s * (oh - 1) + 1:s, dx:dx + s * (ow - 1) + 1:s]
        out = out + window * kernel[dy, dx, 0]
    return out


def _conv(x: jax.Array, features: int, kernel: int, stride: int, padding: str, name: str,
          depthwise: bool = False) -> jax.Array:
  """A kxk convolution with (folded batch-norm) bias; created in the caller's scope."""
  pads = tuple(pad_amounts(x.shape[axis], kernel, stride, padding) for axis in (1, 2))
  if depthwise:
    if features != x.shape[-1]:
      raise ValueError(f"depthwise conv keeps channels: {x.shape[-1]} -> {features}")
    return DepthwiseConv(kernel, stride, pads, name=name)(x)
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=pads, use_bias=True,
                 name=name)(x)


class MBConv(nn.Module):
  """Inverted residual without squeeze-excitation (EfficientNet-Lite block)."""

  expand_ratio: int
  kernel: int
  stride: int
  features: int
  padding: str = "same"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    inputs, channels = x, x.shape[-1]
    if self.expand_ratio != 1:
      x = jax.nn.relu6(_conv(x, channels * self.expand_ratio, 1, 1, self.padding, "expand"))
    x = jax.nn.relu6(_conv(x, x.shape[-1], self.kernel, self.stride, self.padding, "depthwise",
                           depthwise=True))
    x = _conv(x, self.features, 1, 1, self.padding, "project")   # linear bottleneck
    if self.stride == 1 and channels == self.features:
      x = x + inputs            # drop-connect is training-only: nothing to do here
    return x


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0, NHWC, batch norms folded (see module docstring).

  Attributes:
    num_classes: classifier outputs (1000 for the ImageNet checkpoint).
    padding: ``"same"`` (TensorFlow, matches the checkpoint) or ``"symmetric"``.
  """

  num_classes: int = 1000
  padding: str = "same"

  @nn.compact
  def __call__(self, images: jax.Array, features_only: bool = False) -> jax.Array:
    """Normalised images ``[B, H, W, 3]`` (:func:`preprocess`) -> logits ``[B, classes]``.

    With ``features_only`` returns the head's ReLU6 map ``[B, H/32, W/32, 1280]``.
    """
    x = jax.nn.relu6(_conv(images.astype(jnp.float32), STEM_CHANNELS, 3, 2, self.padding, "stem"))
    index = 0
    for expand, kernel, stride, features, repeats in STAGES:
      for r in range(repeats):     # only a stage's first block strides
        x = MBConv(expand, kernel, stride if r == 0 else 1, features, self.padding,
                   name=f"block_{index}")(x)
        index += 1
    x = jax.nn.relu6(_conv(x, FEATURE_DIM, 1, 1, self.padding, "head"))
    if features_only:
      return x
    # Dropout (0.2) is training-only; the classifier sees the global average.
    return nn.Dense(self.num_classes, name="classifier")(x.mean(axis=(1, 2)))

  def features(self, images: jax.Array) -> jax.Array:
    """Normalised images ``[B, 224, 224, 3]`` -> final map ``[B, 7, 7, 1280]``."""
    return self(images, features_only=True)


@functools.partial(jax.jit, static_argnames=("size",))
def preprocess(images: jax.Array, size: int = IMAGE_SIZE) -> jax.Array:
  """uint8 ``[B, H, W]`` / ``[B, H, W, C]`` (C in 1, 3, 4) -> float32 ``[B, size, size, 3]``.

  Grey images are repeated to RGB, alpha is dropped, non-square images are
  centre-cropped to their short side, then resized with an antialiased
  (scale-aware triangle) bilinear filter and normalised to ``(x - 127) / 128``.
  """
  x = images.astype(jnp.float32)
  if x.ndim == 3:
    x = x[..., None]
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = x[..., :3]
  b, h, w, _ = x.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  x = x[:, top:top + side, left:left + side]
  if side != size:
    x = jax.image.resize(x, (b, size, size, 3), method="linear", antialias=True)
  return (x - PIXEL_MEAN) / PIXEL_STD


def _fold(state: dict[str, np.ndarray], conv: str, bn: str) -> dict:
  """Torch conv ``OIHW`` (depthwise ``(C, 1, k, k)``) + BN -> flax ``HWIO`` kernel + bias."""
  w = state.pop(f"{conv}.weight").astype(np.float64)
  gamma, beta = state.pop(f"{bn}.weight"), state.pop(f"{bn}.bias")
  mean, var = state.pop(f"{bn}.running_mean"), state.pop(f"{bn}.running_var")
  state.pop(f"{bn}.num_batches_tracked", None)
  scale = gamma / np.sqrt(var.astype(np.float64) + BN_EPS)
  # OIHW -> HWIO; a depthwise (C, 1, k, k) becomes (k, k, 1, C), flax's grouped layout.
  kernel = w.transpose(2, 3, 1, 0) * scale
  return {"kernel": kernel.astype(np.float32), "bias": (beta - mean * scale).astype(np.float32)}


def convert_state_dict(state: dict[str, np.ndarray]) -> dict[str, Any]:
  """EfficientNet-PyTorch-named state dict -> ``{"params": ...}`` of :class:`EfficientNetLite0`.

  Raises:
    KeyError: a tensor the architecture needs is missing.
    ValueError: tensors are left over (not an EfficientNet-Lite0 checkpoint).
  """
  state = dict(state)
  params: dict[str, Any] = {"stem": _fold(state, "_conv_stem", "_bn0")}
  index = 0
  for expand, _, _, _, repeats in STAGES:
    for _ in range(repeats):
      p, block = f"_blocks.{index}.", {}
      if expand != 1:
        block["expand"] = _fold(state, p + "_expand_conv", p + "_bn0")
      block["depthwise"] = _fold(state, p + "_depthwise_conv", p + "_bn1")
      block["project"] = _fold(state, p + "_project_conv", p + "_bn2")
      params[f"block_{index}"] = block
      index += 1
  params["head"] = _fold(state, "_conv_head", "_bn1")
  params["classifier"] = {"kernel": state.pop("_fc.weight").T.copy(), "bias": state.pop("_fc.bias")}
  if state:
    raise ValueError(f"unexpected tensors in the state dict: {sorted(state)[:10]}")
  return {"params": params}


def load_params(path: str | Path | None = None,
                model: EfficientNetLite0 | None = None) -> dict[str, Any]:
  """Reads the checkpoint (default: the fetched asset) into ``{"params": ...}``.

  The pinned file is checked against its SHA-256 first (one 17 MB hash), and
  every leaf against ``jax.eval_shape(model.init, ...)``.

  Raises:
    fedjax_mm.real.assets.DamagedFileError: damaged or truncated file.
    ValueError: a shape or tree mismatch (the message names the parameter).
  """
  model = model or EfficientNetLite0()
  path = path or assets.path("efficientnet_lite0")
  assets.verify(path)
  variables = convert_state_dict(torch_pickle.load(path))
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32))
  want = {jax.tree_util.keystr(k): v.shape
          for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(k): v.shape
         for k, v in jax.tree_util.tree_leaves_with_path(variables)}
  if want.keys() != got.keys():
    raise ValueError(f"parameter tree mismatch: missing {sorted(want.keys() - got.keys())}, "
                     f"unexpected {sorted(got.keys() - want.keys())}")
  bad = [f"{k}: checkpoint {got[k]} != model {want[k]}" for k in want if got[k] != want[k]]
  if bad:
    raise ValueError("parameter shape mismatch: " + "; ".join(bad))
  return jax.tree_util.tree_map(jnp.asarray, variables)


def num_params(variables: dict[str, Any]) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))


@functools.lru_cache(maxsize=None)
def _jitted(model: EfficientNetLite0, method: str):
  # One jitted function per model and method; jax.jit then caches per input shape.
  return jax.jit(lambda variables, x: model.apply(variables, x, method=getattr(model, method)))


def adaptive_avg_pool(maps: jax.Array, grid: int) -> jax.Array:
  """``[B, H, W, C]`` -> ``[B, grid, grid, C]`` with torch's AdaptiveAvgPool2d bins.

  Output cell ``i`` averages rows ``floor(i H / g) .. ceil((i + 1) H / g) - 1``
  (bins overlap when ``g`` does not divide ``H``: 7 -> 2 uses rows 0-3 and 3-6).
  """
  def bins(n: int) -> list[tuple[int, int]]:
    return [(i * n // grid, -(-(i + 1) * n // grid)) for i in range(grid)]
  rows = [jnp.stack([maps[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in bins(maps.shape[2])],
                    axis=1) for r0, r1 in bins(maps.shape[1])]
  return jnp.stack(rows, axis=1)


def encode(variables: dict[str, Any], images: np.ndarray, pool_to: int | None = None,
           batch_size: int = 32, model: EfficientNetLite0 | None = None) -> np.ndarray:
  """uint8 images ``[B, H, W(, C)]`` -> visual tokens ``[B, N, 1280]`` (float32, host).

  Args:
    variables: from :func:`load_params`.
    images: uint8 batch, preprocessed by :func:`preprocess` chunk by chunk.
    pool_to: ``None``/49: the 7x7 map, row-major; ``1``: its global average;
      ``g * g`` for ``g`` in 2..6: adaptive average pooling to ``g x g``.
    batch_size: images per forward; the last chunk is zero-padded, so the tower
      compiles once per ``(min(batch_size, B), H, W)``.

  Raises:
    ValueError: ``pool_to`` is not a square grid size of at most 49.
  """
  model = model or EfficientNetLite0()
  grid = GRID if pool_to is None else int(round(pool_to ** 0.5))
  if grid * grid != (pool_to or GRID * GRID) or not 1 <= grid <= GRID:
    raise ValueError(f"pool_to must be None or g*g with 1 <= g <= {GRID}, got {pool_to}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  images = np.asarray(images)
  n, chunk = len(images), min(batch_size, len(images))
  if n == 0:
    return np.zeros((0, grid * grid, FEATURE_DIM), np.float32)
  features, out = _jitted(model, "features"), []
  for start in range(0, n, chunk):
    part = images[start:start + chunk]
    if len(part) < chunk:
      part = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], part.dtype)])
    maps = features(variables, preprocess(jnp.asarray(part)))
    if grid != maps.shape[1]:
      maps = adaptive_avg_pool(maps, grid)
    out.append(np.asarray(maps.reshape(chunk, grid * grid, -1)))
  return np.concatenate(out)[:n]


@jax.jit
def _classifier(variables: dict[str, Any], maps: jax.Array) -> jax.Array:
  dense = variables["params"]["classifier"]
  return maps.mean(axis=(1, 2)) @ dense["kernel"] + dense["bias"]


def classify(variables: dict[str, Any], images: jax.Array,
             model: EfficientNetLite0 | None = None) -> jax.Array:
  """Preprocessed images -> logits ``[B, 1000]``, as ``model.apply(variables, images)``.

  Runs the jitted :meth:`EfficientNetLite0.features` (the program :func:`encode`
  also uses, so a batch shape compiles once for both) and then the
  pool + classifier; the tower's compile dominates on CPU.
  """
  maps = _jitted(model or EfficientNetLite0(), "features")(variables, images)
  return _classifier(variables, maps)


def imagenet_labels() -> list[str]:
  """The 1000 ImageNet-1k class names in label order, offline.

  tensorflow-datasets ships the synset ids (``datasets/imagenet2012/labels.txt``)
  and, for SI-Score, the human-readable names in the same order
  (``datasets/siscore/labels.py``, ``IMAGENET_LABELS_LIST``). That file is parsed
  with :mod:`ast` rather than imported, so TensorFlow is never loaded.
  """
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("imagenet_labels() needs tensorflow-datasets installed")
  source = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "siscore" / "labels.py"
  for node in ast.parse(source.read_text()).body:
    if isinstance(node, ast.Assign) and any(
        getattr(t, "id", None) == "IMAGENET_LABELS_LIST" for t in node.targets):
      names = ast.literal_eval(node.value)
      if len(names) != 1000:
        raise ValueError(f"{source}: expected 1000 ImageNet names, got {len(names)}")
      return names
  raise ValueError(f"{source} has no IMAGENET_LABELS_LIST")
