"""EfficientNet-Lite0 (ImageNet-1k) as a frozen JAX/Flax vision tower.

Holds the tower's entry points: :func:`encode` (uint8 images to visual tokens:
the 7x7 final feature map, row-major, or fewer by adaptive average pooling),
:func:`classify`, :func:`adaptive_avg_pool` and :func:`imagenet_labels`. The
network and its input normalisation (:class:`EfficientNetLite0`,
:func:`preprocess`; the architecture and the padding measurement are described
there) are :mod:`fedjax_mm.real.efficientnet_network`; the weights, converted
from the torch state dict with every batch norm folded (:func:`load_params`,
:func:`convert_state_dict`), :mod:`fedjax_mm.real.efficientnet_weights`. Both
are re-exported here.

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

import jax
import jax.numpy as jnp
import numpy as np

# Re-exported: the network and the weights keep their import path here.
from fedjax_mm.real.efficientnet_network import (  # noqa: F401
    FEATURE_DIM, IMAGE_SIZE, PADDINGS, PIXEL_MEAN, PIXEL_STD, STAGES, STEM_CHANNELS,
    DepthwiseConv, EfficientNetLite0, MBConv, _conv, pad_amounts, preprocess)
from fedjax_mm.real.efficientnet_weights import (  # noqa: F401
    BN_EPS, convert_state_dict, load_params, num_params)

GRID = 7                 # final feature map side at 224px (stride 32)


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
