"""EfficientNet-Lite0 weights: the torch state dict converted to Flax, batch norms folded.

Holds :func:`convert_state_dict`, :func:`load_params` and :func:`num_params`.

The weights are the ``efficientnet-lite0-57934424.pth`` state dict (a conversion
of the TensorFlow checkpoint, keys named as in EfficientNet-PyTorch:
``_conv_stem``/``_bn0``, ``_blocks.{i}._expand_conv|_depthwise_conv|_project_conv``
with ``_bn0|_bn1|_bn2``, ``_conv_head``/``_bn1``, ``_fc``), read without torch by
:mod:`fedjax_mm.real.torch_pickle`. The tower is inference-only, so
:func:`load_params` folds every batch norm (running statistics, eps 1e-3) into
the preceding bias-free convolution: ``w * g / sqrt(v + eps)`` and bias
``b - m * g / sqrt(v + eps)``; the module is then convolutions with biases only.

References:
  EfficientNet-Lite: TensorFlow TPU repository,
  ``models/official/efficientnet/lite`` (2020).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mm.real import assets
from fedjax_mm.real import torch_pickle
from fedjax_mm.real.efficientnet_network import IMAGE_SIZE, STAGES, EfficientNetLite0

BN_EPS = 1e-3


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
