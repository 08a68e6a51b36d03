"""Captions of world scenes: template styles, paraphrase pairs, probes, parsing.

Every style states the same facts (main group: count, size, color, shape,
quadrant; distractor: size, color, shape, quadrant) in different words and
orders, so a caption of any style parses back to the scene's attributes.
Rendering is vectorized: each template is a list of per-example slot arrays
of token ids (PAD where a slot is absent) that are concatenated and packed to
the left.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fedjax_mm.data import tokenizer as tok
from fedjax_mm.data import world

Attrs = Mapping[str, np.ndarray]


def _lookup(t: tok.Tokenizer, words) -> np.ndarray:
  return t.ids(list(words))


def _const(t: tok.Tokenizer, n: int, *words: str) -> np.ndarray:
  return np.broadcast_to(_lookup(t, words), (n, len(words)))


def _where(cond: np.ndarray, ids: np.ndarray) -> np.ndarray:
  return np.where(cond[:, None], ids, tok.PAD)


def _group_slots(t: tok.Tokenizer, a: Attrs, style: str) -> list[np.ndarray]:
  n = a["shape"].size
  many = a["count"] > 0
  shape = np.where(many, _lookup(t, world.PLURALS)[a["shape"]], _lookup(t, world.SHAPES)[a["shape"]])
  color = _lookup(t, world.COLORS)[a["color"]][:, None]
  size = _lookup(t, world.SIZES)[a["size"]][:, None]
  where = np.stack([_lookup(t, [p[0] for p in world.POSITIONS])[a["position"]],
                    _lookup(t, [p[1] for p in world.POSITIONS])[a["position"]]], 1)
  count_word = _lookup(t, world.COUNTS)[a["count"]][:, None]
  a_or_count = np.where(many, _lookup(t, world.COUNTS)[a["count"]], t.id("a"))[:, None]
  shape = shape[:, None]
  if style == "natural":
    return [a_or_count, size, color, shape, _const(t, n, "at", "the"), where]
  if style == "terse":
    digit = _lookup(t, ["1", "2", "3"])[a["count"]][:, None]
    comma = _const(t, n, ",")
    return [color, shape, comma, size, comma, where, comma, _const(t, n, "x"), digit]
  if style == "list":
    return [_const(t, n, "count"), count_word, _const(t, n, "shape"), shape,
            _const(t, n, "color"), color, _const(t, n, "size"), size,
            _const(t, n, "position"), where]
  if style == "there_is":
    verb = np.where(many, t.id("are"), t.id("is"))[:, None]
    return [_const(t, n, "there"), verb, count_word, size, color, shape,
            _const(t, n, "in", "the"), where, _const(t, n, "corner")]
  raise ValueError(f"style must be one of {world.STYLES}, got {style!r}")


def _distractor_slots(t: tok.Tokenizer, a: Attrs, style: str) -> list[np.ndarray]:
  n = a["shape"].size
  d = {"shape": a["d_shape"], "color": a["d_color"], "size": a["d_size"],
       "position": a["d_position"], "count": np.zeros(n, np.int32)}
  body = _group_slots(t, d, style)
  has = a["has_distractor"]
  if style == "natural":
    joiner = _const(t, n, "and")
  elif style == "there_is":
    # "... and also a large blue square in the bottom right corner"
    joiner, body = _const(t, n, "and", "also"), [_const(t, n, "a")] + body[3:]
  elif style == "terse":
    joiner, body = _const(t, n, ";"), body[:6]  # no "x 1" for a single object
  else:
    joiner, body = _const(t, n, ";"), body[2:]  # list: no count for a single object
  return [_where(has, s) for s in [joiner] + body]


def render(t: tok.Tokenizer, a: Attrs, styles: np.ndarray,
           length: int = world.CAPTION_LENGTH, eos: bool = True) -> np.ndarray:
  """Captions ``[N, length]`` int32: words, EOS (if ``eos``), PAD.

  Args:
    t: the world's tokenizer.
    a: scene attributes (a :class:`world.Scenes` ``_asdict()`` works).
    styles: ``[N]`` style index per example (into ``world.STYLES``).
    length: padded length.
    eos: append EOS after the words.
  """
  n = np.asarray(a["shape"]).size
  out = np.full((n, length), tok.PAD, np.int32)
  styles = np.broadcast_to(np.asarray(styles), (n,))
  for s, style in enumerate(world.STYLES):
    rows = np.flatnonzero(styles == s)
    if rows.size == 0:
      continue
    sub = {k: np.asarray(v)[rows] for k, v in a.items() if np.ndim(v) == 1}
    slots = _group_slots(t, sub, style) + _distractor_slots(t, sub, style)
    ids = np.concatenate(slots, axis=1)
    if eos:
      ids = np.concatenate([ids, np.full((rows.size, 1), tok.EOS, np.int32)], 1)
    # Pack non-PAD tokens to the left (stable: keeps word order).
    order = np.argsort(ids == tok.PAD, axis=1, kind="stable")
    packed = np.take_along_axis(ids, order, axis=1)
    if np.any(packed[:, length:] != tok.PAD):
      raise ValueError(f"a {style!r} caption exceeds length={length}")
    out[rows, :min(length, packed.shape[1])] = packed[:, :length]
  return out


def paraphrase_pairs(t: tok.Tokenizer, a: Attrs, rng: np.random.Generator,
                     length: int = 2 * world.CAPTION_LENGTH + 2) -> np.ndarray:
  """LM pretraining text: ``BOS caption_i SEP caption_j EOS`` (styles i != j).

  The second caption is predictable only from the first, so an LM trained on
  these learns to use its context -- what later lets a visual prefix steer it.
  """
  n = np.asarray(a["shape"]).size
  first = rng.integers(0, len(world.STYLES), n)
  second = (first + rng.integers(1, len(world.STYLES), n)) % len(world.STYLES)
  left = render(t, a, first, eos=False)
  right = render(t, a, second)
  ids = np.concatenate([np.full((n, 1), tok.BOS, np.int32), left,
                        np.full((n, 1), tok.SEP, np.int32), right], 1)
  order = np.argsort(ids == tok.PAD, axis=1, kind="stable")
  return np.take_along_axis(ids, order, axis=1)[:, :length]


NUM_VALUES = {"shape": len(world.SHAPES), "color": len(world.COLORS),
              "size": len(world.SIZES), "position": 4, "count": len(world.COUNTS)}


def probes(t: tok.Tokenizer, a: Attrs, styles: np.ndarray, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
  """Zero-shot alignment candidates: the true caption and one per attribute.

  Returns:
    ``(probes [N, 1 + A, L], probe_attr [N, 1 + A])``: index 0 is the true
    caption (attr -1); candidate ``1 + i`` changes attribute
    ``world.ATTRIBUTES[i]`` of the main group to a different random value.
  """
  n = np.asarray(a["shape"]).size
  candidates = [render(t, a, styles)]
  for name in world.ATTRIBUTES:
    changed = dict(a)
    k = NUM_VALUES[name]
    changed[name] = (np.asarray(a[name]) + rng.integers(1, k, n)) % k
    candidates.append(render(t, changed, styles))
  attr = np.broadcast_to(np.arange(-1, len(world.ATTRIBUTES), dtype=np.int32),
                         (n, 1 + len(world.ATTRIBUTES)))
  return np.stack(candidates, 1), attr.copy()


def parse(t: tok.Tokenizer, ids: np.ndarray) -> dict[str, int]:
  """One caption's ids -> the main group's attributes (and the distractor's).

  Order-insensitive within a segment, so it reads every style. Returns keys
  of ``world.ATTRIBUTES`` plus ``has_distractor`` and ``d_*`` when present.
  """
  words = t.decode(ids).split()
  segments, current = [], []
  for i, w in enumerate(words):
    if w == ";" or (w == "and" and i > 0):
      segments.append(current)
      current = []
    elif w != "also":
      current.append(w)
  segments.append(current)

  def read(seg):
    out = {"count": 0}
    for w in seg:
      if w in world.SHAPES:
        out["shape"] = world.SHAPES.index(w)
      elif w in world.PLURALS:
        out["shape"] = world.PLURALS.index(w)
      elif w in world.COLORS:
        out["color"] = world.COLORS.index(w)
      elif w in world.SIZES:
        out["size"] = world.SIZES.index(w)
      elif w in world.COUNTS:
        out["count"] = world.COUNTS.index(w)
      elif w in ("1", "2", "3"):
        out["count"] = int(w) - 1
    vertical = "top" if "top" in seg else "bottom"
    horizontal = "left" if "left" in seg else "right"
    out["position"] = world.POSITIONS.index((vertical, horizontal))
    return out

  result = read(segments[0])
  result["has_distractor"] = len(segments) > 1
  if len(segments) > 1:
    result.update({f"d_{k}": v for k, v in read(segments[1]).items() if k != "count"})
  return result
