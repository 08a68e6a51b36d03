"""Shipped pretrained towers: checksummed ``.npz`` + manifest, and the lookup order.

The synthetic towers' ~3,000 pretraining steps round differently on
different CPUs (XLA's CPU code generation differs), and everything trained on
top of them moves with them. So the towers of the configs the project uses
are built once (``scripts/make_towers.py``) and shipped in the package
(``fedjax_mm/assets/towers``): every machine then loads the same bits.

An artifact of tower ``name`` with config ``c`` is two files:
``<name>-<config_hash(c)>.npz`` (float32 leaves under their ``/``-joined
param paths) and ``<name>-<config_hash(c)>.json`` (format version, the config
dict, its hash, the ``.npz``'s SHA-256, and the CPU, jax version and date it
was built with, plus reference values to reproduce).

:func:`load_or_build` is the lookup order: a shipped artifact (checksum
verified) > the local build cache (``towers.cached_params``) > pretraining.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

from fedjax_mm.models import mllm, towers
from fedjax_mm.models.vision import IMAGE_SIZE
from fedjax_mm.types import PyTree

FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets" / "towers"
REGENERATE = "python scripts/make_towers.py"


def config_dict(config: Any) -> dict[str, Any]:
  """A config as the plain JSON dict the manifest stores (and compares)."""
  if dataclasses.is_dataclass(config):
    config = dataclasses.asdict(config)
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def paths(root: str | os.PathLike, name: str, config: Any) -> tuple[Path, Path]:
  """``(<root>/<name>-<hash>.npz, <root>/<name>-<hash>.json)``."""
  stem = Path(root) / f"{name}-{towers.config_hash(config)}"
  return stem.with_suffix(".npz"), stem.with_suffix(".json")


def flatten(params: PyTree) -> dict[str, np.ndarray]:
  """``{'a/b/kernel': array}`` for a nested dict of arrays."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    flat["/".join(str(k.key) for k in path)] = np.asarray(leaf)
  return flat


def unflatten(flat: Mapping[str, np.ndarray], abstract: PyTree, source: str) -> PyTree:
  """The params of ``abstract``'s structure from :func:`flatten`'s output.

  Raises:
    ValueError: a missing or extra path, or a shape/dtype unlike ``abstract``'s.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  want = ["/".join(str(k.key) for k in path) for path, _ in leaves]
  if sorted(want) != sorted(flat):
    raise ValueError(f"{source}: param paths must be the module's, got "
                     f"{len(set(flat) - set(want))} extra and "
                     f"{len(set(want) - set(flat))} missing; regenerate with: {REGENERATE}")
  out = []
  for key, (_, spec) in zip(want, leaves):
    value = flat[key]
    if value.shape != spec.shape or value.dtype != spec.dtype:
      raise ValueError(f"{source}: {key} must be {spec.dtype}{list(spec.shape)}, got "
                       f"{value.dtype}{list(value.shape)}; regenerate with: {REGENERATE}")
    out.append(value)
  # Device arrays, as an orbax restore gives: a module indexing a NumPy
  # weight with a tracer (``pos_embed[positions]``) would fail under jit.
  return jax.tree_util.tree_unflatten(treedef, jax.device_put(out))


def sha256(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``; ``platform`` elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
  # A crash never leaves a half-written artifact under the final name.
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a shipped file from its readers
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def write(root: str | os.PathLike, name: str, config: Any, params: PyTree,
          reference: Mapping[str, Any]) -> Path:
  """Writes ``params`` as the artifact of ``(name, config)``; returns the manifest path.

  Args:
    root: the artifact folder (created if missing).
    name: e.g. ``'vit'`` or ``'lm'``.
    config: the tower config (dict or dataclass).
    params: float32 params.
    reference: JSON values the loaded params must reproduce (see the tests).
  """
  npz, manifest = paths(root, name, config)
  npz.parent.mkdir(parents=True, exist_ok=True)
  _atomic_write(npz, lambda f: np.savez(f, **flatten(params)))
  meta = {"format_version": FORMAT_VERSION, "name": name, "config": config_dict(config),
          "config_hash": towers.config_hash(config), "npz": npz.name,
          "npz_sha256": sha256(npz), "npz_bytes": npz.stat().st_size,
          "cpu_model": cpu_model(), "jax_version": jax.__version__,
          "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
          "reference": reference}
  text = json.dumps(meta, indent=1, sort_keys=True) + "\n"
  _atomic_write(manifest, lambda f: f.write(text.encode()))
  return manifest


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def verify(manifest_path: str | os.PathLike) -> dict[str, Any]:
  """The manifest, after checking its format and the ``.npz``'s SHA-256.

  Raises:
    ValueError: one line naming the file and the regenerate command.
  """
  meta = read_manifest(manifest_path)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{manifest_path}: format_version must be {FORMAT_VERSION}, got "
                     f"{meta.get('format_version')!r}; regenerate with: {REGENERATE}")
  npz = Path(manifest_path).parent / meta["npz"]
  got = sha256(npz) if npz.exists() else "missing file"
  if got != meta["npz_sha256"]:
    raise ValueError(f"{npz}: SHA-256 must be {meta['npz_sha256']} (its manifest), got "
                     f"{got}; regenerate with: {REGENERATE}")
  return meta


def load(root: str | os.PathLike, name: str, config: Any, abstract: PyTree) -> PyTree | None:
  """The shipped params of ``(name, config)``, or None when none is shipped.

  Raises:
    ValueError: the artifact exists but fails its checksum, names another
      config, or does not fit ``abstract`` (one line, with the fix).
  """
  npz, manifest = paths(root, name, config)
  if not manifest.exists():
    return None
  meta = verify(manifest)
  if meta["config"] != config_dict(config):
    raise ValueError(f"{manifest}: config must be the one hashed to {meta['config_hash']}, "
                     f"got a different dict; regenerate with: {REGENERATE}")
  with np.load(npz) as data:
    flat = {k: data[k] for k in data.files}
  return unflatten(flat, abstract, str(npz))


def reference_images(num: int = 4) -> np.ndarray:
  """Fixed uint8 ``[num, 32, 32, 3]`` noise images (PCG64 integers: the same on every machine)."""
  return np.random.default_rng(0).integers(0, 256, (num, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


def reference_values(name: str, config: Any, params: PyTree,
                     sequences: np.ndarray | None = None) -> dict[str, Any]:
  """What a manifest records for its params to reproduce on any machine.

  ``'lm'``: :func:`towers.lm_metrics` on ``sequences`` (stored too);
  ``'vit'``: the first 4 x 4 features of 4 :func:`reference_images` and
  their mean absolute value.
  """
  if name == "lm":
    return {"sequences": np.asarray(sequences).tolist(),
            **towers.lm_metrics(config.module(), params, np.asarray(sequences))}
  feats = np.asarray(mllm.encode_images(config.module(), params, reference_images(), 4))
  return {"features_head": feats[:, :4, :4].tolist(),
          "features_mean_abs": float(np.mean(np.abs(feats)))}


def load_or_build(name: str, config: Any, build_fn: Callable[[], PyTree], abstract: PyTree,
                  *, cache_dir: str | os.PathLike,
                  shipped_dir: str | os.PathLike = SHIPPED_DIR) -> PyTree:
  """Shipped artifact, else the local cache, else ``build_fn`` (then cached).

  A tower that is not shipped is machine-dependent (its pretraining rounds
  differently on other CPUs): that is logged, once per call.
  """
  params = load(shipped_dir, name, config, abstract)
  if params is not None:
    return params
  logging.warning("no shipped %s tower for this config (hash %s): pretraining, ~2 min at "
                  "full size (or loading its local build), cached in %s; `%s` ships it",
                  name, towers.config_hash(config), cache_dir, REGENERATE)
  return towers.cached_params(cache_dir, name, config, build_fn, abstract)
