"""The synthetic world as a local TFDS dataset (``array_record``, no TensorFlow).

Holds :class:`ShapesWorld` (a generator-based builder: images, caption text
in one style, attributes as ``ClassLabel``), its config
:class:`ShapesWorldConfig` / :func:`world_config` (named by content), the
examples it writes (:func:`world_examples`) and :func:`build_world_dataset`,
which prepares it in a local ``data_dir``; nothing is downloaded, the splits
come from :func:`world.generate`. Re-exported by :mod:`fedjax_mm.data.tfds`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from fedjax_mm.data import captions, world

_WORLD_LABELS = {  # ClassLabel names of the world's attributes
    "shape": world.SHAPES, "color": world.COLORS, "size": world.SIZES,
    "position": tuple("_".join(p) for p in world.POSITIONS),
    "count": world.COUNTS, "domain": world.DOMAINS}
_DISTRACTOR = ("d_shape", "d_color", "d_size", "d_position")


@dataclasses.dataclass(eq=False)
class ShapesWorldConfig(tfds.core.BuilderConfig):
  """What to generate; make one with :func:`world_config` (it names it)."""

  seed: int = 0
  num_train: int = 10_000
  num_test: int = 1_000
  spec: world.WorldSpec = world.WorldSpec()
  style: str = "natural"


def world_config(seed: int = 0, num_train: int = 10_000, num_test: int = 1_000,
                 spec: world.WorldSpec = world.WorldSpec(), style: str = "natural"
                 ) -> ShapesWorldConfig:
  """A config whose name (hence directory) is unique to its content."""
  if style not in world.STYLES:
    raise ValueError(f"style must be one of {world.STYLES}, got {style!r}")
  digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:8]
  return ShapesWorldConfig(name=f"s{seed}_{num_train}_{num_test}_{style}_{digest}",
                           version=ShapesWorld.VERSION, seed=seed, num_train=num_train,
                           num_test=num_test, spec=spec, style=style)


def world_examples(config: ShapesWorldConfig) -> tuple[world.Scenes, list[str]]:
  """The scenes (train rows first, then test) and their caption text."""
  scenes = world.generate(config.spec, config.seed, config.num_train + config.num_test)
  t = world.make_tokenizer()
  ids = captions.render(t, scenes._asdict(), world.STYLES.index(config.style))
  return scenes, [t.decode(row) for row in ids]


class ShapesWorld(tfds.core.GeneratorBasedBuilder):
  """The synthetic world as a local TFDS image-caption dataset (no download)."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10 resolves the file of a builder defined in a package through
    # `importlib_resources`, which it installs only for Python < 3.9
    # (ModuleNotFoundError in download_and_prepare); this is the same file.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    labels = {k: tfds.features.ClassLabel(names=v) for k, v in _WORLD_LABELS.items()}
    labels.update({k: tfds.features.ClassLabel(names=_WORLD_LABELS[k[2:]])
                   for k in _DISTRACTOR})
    return tfds.core.DatasetInfo(
        builder=self,
        description="Procedural 32x32 scenes with captions (fedjax_mm.data.world).",
        # Raw uint8 tensor: tfds.features.Image needs TensorFlow to encode arrays.
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            "has_distractor": tfds.features.Scalar(dtype=np.bool_),
            **labels}),
        # Keep generation order so row i of a split is scene i of world.generate.
        disable_shuffling=True)

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # generated, not downloaded
    config = self.builder_config
    if not isinstance(config, ShapesWorldConfig):
      raise ValueError("ShapesWorld needs config=world_config(...)")
    scenes, texts = world_examples(config)
    n = config.num_train
    return {"train": self._generate_examples(scenes, texts, 0, n),
            "test": self._generate_examples(scenes, texts, n, n + config.num_test)}

  def _generate_examples(self, scenes: world.Scenes, texts: list[str], start: int, stop: int):
    for i in range(start, stop):
      yield i - start, {"image": scenes.images[i], "caption": texts[i],
                        "has_distractor": bool(scenes.has_distractor[i]),
                        **{k: int(getattr(scenes, k)[i]) for k in
                           (*_WORLD_LABELS, *_DISTRACTOR)}}


def build_world_dataset(data_dir: str | os.PathLike, *, seed: int = 0, num_train: int,
                        num_test: int, spec: world.WorldSpec = world.WorldSpec(),
                        style: str = "natural") -> ShapesWorld:
  """Writes the world into ``data_dir`` as array_record (a no-op if present).

  Args:
    data_dir: TFDS data directory; the dataset lands in
      ``data_dir/shapes_world/<config name>/1.0.0``.
    seed: :func:`world.generate` seed; ``num_train + num_test`` scenes are
      generated at once, train rows first.
    num_train: examples in the "train" split.
    num_test: examples in the "test" split.
    spec: world difficulty knobs.
    style: caption style stored as text (one of ``world.STYLES``).

  Returns:
    The prepared builder; ``builder.as_data_source()[split]`` reads it.
  """
  builder = ShapesWorld(config=world_config(seed, num_train, num_test, spec, style),
                        data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder
