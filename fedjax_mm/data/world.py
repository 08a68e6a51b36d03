"""The synthetic multimodal world: procedural scenes, images, captions, probes.

No real image-caption corpus can be downloaded here, so the default data is a
world with known ground truth, built to study alignment under controlled
heterogeneity (DESIGN.md section 5).

A scene has a main group of ``count`` (1-3) identical objects -- ``shape``,
``color``, ``size`` -- in one quadrant (``position``), and with probability
``distractor_prob`` a single distractor object with its own shape, color and
size in another quadrant. The distractor is what makes the task a binding
problem: "a red circle and a blue square" is not "a blue circle and a red
square". Images are 32x32 RGB rendered in one of several *domains* (clean,
noisy, low contrast, tinted, blurred, bright background: "which device took
it"), with jitter in position, radius, colour and background everywhere.
Rendering runs as jitted XLA stages over blocks of scenes; randomness of
attributes comes from numpy, of pixels from ``jax.random``, both seeded.

Captions describe the scene in one of several template *styles* (a property
of a client); all styles carry the same facts, so any caption parses back to
the scene's attributes. Probes for evaluation are the true caption plus, for
each attribute, the caption with that one attribute of the main group changed.

Everything is vectorized over examples (numpy; rendering in blocks), so 100k
examples take seconds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mm.data import tokenizer as tok

ATTRIBUTES = ("shape", "color", "size", "position", "count")
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
PLURALS = ("circles", "squares", "triangles", "diamonds", "crosses", "rings")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
RGB = np.array([[.9, .12, .1], [.1, .75, .15], [.15, .3, .95], [.95, .88, .1],
                [.62, .18, .82], [1., .55, .05], [.1, .85, .88], [.95, .95, .95]],
               np.float32)
SIZES = ("small", "large")
POSITIONS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))
COUNTS = ("one", "two", "three")
DOMAINS = ("clean", "noisy", "low_contrast", "tinted", "blurred", "bright")
STYLES = ("natural", "terse", "list", "there_is")
CAPTION_LENGTH = 24
RADII = (3.5, 5.5)           # small, large (pixels); smaller ones hide shape from a small ViT
_QUADRANT_ORIGIN = np.array([[0, 0], [0, 16], [16, 0], [16, 16]], np.float32)  # (y, x)
_BLOCK = 4096


@dataclasses.dataclass(frozen=True)
class WorldSpec:
  """Knobs of the world's difficulty.

  Attributes:
    distractor_prob: probability that a scene has a distractor object.
    noise: pixel noise std in every domain (the "noisy" domain adds more).
    jitter: position jitter in pixels.
  """

  distractor_prob: float = 0.5
  noise: float = 0.04
  jitter: float = 0.5


class Scenes(NamedTuple):
  """A batch of scenes: attribute arrays ``[N]`` and rendered images.

  ``shape, color, size, position, count`` describe the main group (count is
  0-based: 0 means one object); ``d_*`` the distractor (valid where
  ``has_distractor``); ``domain`` indexes ``DOMAINS``.
  """

  shape: np.ndarray
  color: np.ndarray
  size: np.ndarray
  position: np.ndarray
  count: np.ndarray
  has_distractor: np.ndarray
  d_shape: np.ndarray
  d_color: np.ndarray
  d_size: np.ndarray
  d_position: np.ndarray
  domain: np.ndarray
  images: np.ndarray  # uint8 [N, 32, 32, 3]

  def attributes(self) -> dict[str, np.ndarray]:
    return {name: getattr(self, name) for name in ATTRIBUTES}

  def concepts(self) -> np.ndarray:
    """Concept key for concept skew: the main group's shape x color."""
    return self.shape * len(COLORS) + self.color


def make_tokenizer() -> tok.Tokenizer:
  words = set(SHAPES) | set(PLURALS) | set(COLORS) | set(SIZES) | set(COUNTS)
  words |= {w for p in POSITIONS for w in p}
  words |= {"a", "at", "the", "and", "in", "corner", "there", "is", "are", "also",
            "shape", "color", "size", "position", "count", ",", ";", "x", "2", "3", "1"}
  return tok.Tokenizer(words)


def sample_attributes(spec: WorldSpec, rng: np.random.Generator, n: int,
                      domain: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Uniform attributes; the distractor takes a different quadrant."""
  a = {"shape": rng.integers(0, len(SHAPES), n), "color": rng.integers(0, len(COLORS), n),
       "size": rng.integers(0, len(SIZES), n), "position": rng.integers(0, 4, n),
       "count": rng.integers(0, len(COUNTS), n),
       "has_distractor": rng.random(n) < spec.distractor_prob,
       "d_shape": rng.integers(0, len(SHAPES), n), "d_color": rng.integers(0, len(COLORS), n),
       "d_size": rng.integers(0, len(SIZES), n)}
  a["d_position"] = (a["position"] + rng.integers(1, 4, n)) % 4
  a["domain"] = rng.integers(0, len(DOMAINS), n) if domain is None else np.asarray(domain)
  return {k: np.asarray(v, np.int32) if k != "has_distractor" else v for k, v in a.items()}


def _shape_masks(dy: jax.Array, dx: jax.Array, r: jax.Array, shape: jax.Array):
  """Boolean masks ``[..., H, W]`` of objects of per-object shape and radius."""
  ady, adx = jnp.abs(dy), jnp.abs(dx)
  dist = jnp.sqrt(dy**2 + dx**2)
  masks = (
      dist <= r,                                                   # circle
      jnp.maximum(ady, adx) <= 0.85 * r,                           # square
      (dy <= 0.8 * r) & (adx <= 0.58 * (dy + r)),                  # triangle
      ady + adx <= 1.15 * r,                                       # diamond
      ((adx <= 0.35 * r) & (ady <= r)) | ((ady <= 0.35 * r) & (adx <= r)),  # cross
      (dist <= r) & (dist >= 0.5 * r),                             # ring
  )
  out = masks[0]
  for k in range(1, len(masks)):
    out = jnp.where(shape == k, masks[k], out)
  return out


def _apply_domain(image: jax.Array, domain: jax.Array) -> jax.Array:
  d = domain[:, None, None, None]
  variants = (
      image,                                                        # clean
      image,                                                        # noisy (see noise)
      0.45 + 0.35 * (image - 0.45),                                 # low contrast
      image * jnp.array([1.0, 0.78, 0.5]) + jnp.array([0.12, 0.06, 0.0]),  # tinted
      jax.lax.reduce_window(jnp.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"),
                            0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "VALID") / 9.0,
      jnp.where(image.mean(-1, keepdims=True) < 0.25, 0.85 - image, image),  # bright
  )
  out = variants[0]
  for k in range(1, len(variants)):
    out = jnp.where(d == k, variants[k], out)
  return out


@jax.jit
def _object_masks(a: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Masks ``[n, 4, 32, 32]`` and colours ``[n, 4, 3]`` of each scene's objects.

  Up to 4 objects per scene: 3 copies of the main group + the distractor.
  """
  n = a["shape"].shape[0]
  k_jitter, k_radius, k_color = jax.random.split(key, 3)
  offsets = jnp.zeros((3, 4, 2)).at[:, :3].set(jnp.array(
      [[[8, 8], [0, 0], [0, 0]], [[8, 4.5], [8, 11.5], [0, 0]],
       [[4.5, 4.5], [4.5, 11.5], [11.5, 8]]], jnp.float32))
  origin = jnp.asarray(_QUADRANT_ORIGIN)
  slots = origin[a["position"]][:, None] + offsets[a["count"]]
  slots = slots.at[:, 3].set(origin[a["d_position"]] + 8)
  slots += a["jitter"] * jax.random.normal(k_jitter, slots.shape)
  present = jnp.concatenate([jnp.arange(3)[None] <= a["count"][:, None],
                             a["has_distractor"][:, None]], 1)
  rep = lambda main, dis: jnp.concatenate([jnp.repeat(main[:, None], 3, 1), dis[:, None]], 1)
  shape, color = rep(a["shape"], a["d_shape"]), rep(a["color"], a["d_color"])
  radius = jnp.asarray(RADII)[rep(a["size"], a["d_size"])]
  radius *= jax.random.uniform(k_radius, (n, 4), minval=0.9, maxval=1.1)
  grid = jnp.arange(32, dtype=jnp.float32) + 0.5
  dy = grid[None, None, :, None] - slots[..., 0, None, None]
  dx = grid[None, None, None, :] - slots[..., 1, None, None]
  masks = _shape_masks(dy, dx, radius[..., None, None], shape[..., None, None])
  rgb = jnp.clip(jnp.asarray(RGB)[color] + 0.05 * jax.random.normal(k_color, (n, 4, 3)), 0, 1)
  return masks & present[..., None, None], rgb


@jax.jit
def _composite(masks: jax.Array, rgb: jax.Array, key: jax.Array) -> jax.Array:
  n = masks.shape[0]
  background = jax.random.uniform(key, (n, 1, 1, 1), minval=0.08, maxval=0.22)
  image = jnp.broadcast_to(background, (n, 32, 32, 3))
  for k in range(4):  # later objects on top
    image = jnp.where(masks[:, k, ..., None], rgb[:, k, None, None, :], image)
  return image


@jax.jit
def _finish(image: jax.Array, domain: jax.Array, noise: jax.Array, key: jax.Array) -> jax.Array:
  image = _apply_domain(image, domain)
  # One noise draw for all domains, the "noisy" domain with a larger std;
  # uniform noise of that std (a normal draw costs 4x more here).
  std = noise + 0.18 * (domain == DOMAINS.index("noisy"))
  draw = jax.random.uniform(key, image.shape, minval=-1.0, maxval=1.0) * jnp.sqrt(3.0)
  image += std[:, None, None, None] * draw
  return jnp.round(jnp.clip(image, 0, 1) * 255).astype(jnp.uint8)


def _render_block(spec: WorldSpec, a: dict[str, np.ndarray], key: jax.Array) -> np.ndarray:
  """Renders a block of scenes to uint8 ``[n, 32, 32, 3]``.

  Three jitted stages on purpose: as one program XLA fuses the masks into
  the compositing and the composite into the blur's 9 taps, recomputing them
  (5x slower than materializing between stages).
  """
  k_masks, k_background, k_noise = jax.random.split(key, 3)
  inputs = dict(a, jitter=np.float32(spec.jitter))
  masks, rgb = _object_masks(inputs, k_masks)
  image = _composite(masks, rgb, k_background)
  return np.asarray(_finish(image, a["domain"], np.float32(spec.noise), k_noise))


def generate(spec: WorldSpec, seed: int, n: int, domain: np.ndarray | None = None
             ) -> Scenes:
  """Samples ``n`` scenes and renders their images (deterministic by seed).

  Args:
    spec: world difficulty knobs.
    seed: numpy seed.
    n: number of scenes.
    domain: optional ``[n]`` domain per scene (e.g. from a domain-skewed
      partition); uniform over ``DOMAINS`` when None.
  """
  rng = np.random.default_rng(seed)
  a = sample_attributes(spec, rng, n, domain)
  key = jax.random.key(seed)
  blocks = []
  for i, start in enumerate(range(0, n, _BLOCK)):
    block = {k: v[start:start + _BLOCK] for k, v in a.items()}
    size = block["shape"].size
    # Pad the last block to the full size: one compiled program for all blocks.
    block = {k: np.pad(v, (0, _BLOCK - size)) for k, v in block.items()}
    blocks.append(_render_block(spec, block, jax.random.fold_in(key, i))[:size])
  images = np.concatenate(blocks) if blocks else np.zeros((0, 32, 32, 3), np.uint8)
  return Scenes(images=images, **a)
