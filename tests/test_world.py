"""The synthetic multimodal world: determinism, captions parse back, probes."""

import numpy as np
import pytest

from fedjax_mm.data import captions, tokenizer as tok, world

SPEC = world.WorldSpec()


@pytest.fixture(scope="module")
def scenes():
  return world.generate(SPEC, seed=7, n=600)


def test_generation_is_deterministic_by_seed(scenes):
  again = world.generate(SPEC, seed=7, n=600)
  for a, b in zip(scenes, again):
    np.testing.assert_array_equal(a, b)
  other = world.generate(SPEC, seed=8, n=600)
  assert not np.array_equal(scenes.images, other.images)
  assert scenes.images.shape == (600, 32, 32, 3) and scenes.images.dtype == np.uint8


def test_attributes_cover_their_ranges_and_distractor_quadrant_differs(scenes):
  for name, k in captions.NUM_VALUES.items():
    assert set(np.unique(getattr(scenes, name))) == set(range(k))
  has = scenes.has_distractor
  assert 0.4 < has.mean() < 0.6
  assert np.all(scenes.d_position[has] != scenes.position[has])
  assert set(np.unique(scenes.domain)) == set(range(len(world.DOMAINS)))


def test_every_style_parses_back_to_the_attributes(scenes):
  t = world.make_tokenizer()
  a = scenes._asdict()
  for style in range(len(world.STYLES)):
    caps = captions.render(t, a, np.full(len(scenes.shape), style))
    assert caps.shape == (600, world.CAPTION_LENGTH)
    for i in range(0, 600, 7):
      parsed = captions.parse(t, caps[i])
      for name in world.ATTRIBUTES:
        assert parsed[name] == a[name][i], (world.STYLES[style], t.decode(caps[i]))
      assert parsed["has_distractor"] == a["has_distractor"][i]
      if a["has_distractor"][i]:
        for name in ("shape", "color", "size", "position"):
          assert parsed[f"d_{name}"] == a[f"d_{name}"][i]
      # EOS right after the words, PAD after it.
      eos = int(np.flatnonzero(caps[i] == tok.EOS)[0])
      assert np.all(caps[i, eos + 1:] == tok.PAD) and np.all(caps[i, :eos] > tok.UNK)


def test_hand_checked_caption():
  t = world.make_tokenizer()
  a = {"shape": np.array([0]), "color": np.array([0]), "size": np.array([1]),
       "position": np.array([3]), "count": np.array([1]), "has_distractor": np.array([True]),
       "d_shape": np.array([1]), "d_color": np.array([2]), "d_size": np.array([0]),
       "d_position": np.array([0])}
  expect = {
      "natural": "two large red circles at the bottom right and a small blue square at the top left",
      "terse": "red circles , large , bottom right , x 2 ; blue square , small , top left",
      "list": "count two shape circles color red size large position bottom right ; "
              "shape square color blue size small position top left",
      "there_is": "there are two large red circles in the bottom right corner and also "
                  "a small blue square in the top left corner",
  }
  for s, style in enumerate(world.STYLES):
    assert t.decode(captions.render(t, a, np.array([s]))[0]) == expect[style]


def test_probes_differ_from_the_truth_in_exactly_the_named_attribute(scenes):
  t = world.make_tokenizer()
  a = scenes._asdict()
  styles = np.random.default_rng(0).integers(0, len(world.STYLES), 600)
  probes, attr = captions.probes(t, a, styles, np.random.default_rng(1))
  assert probes.shape == (600, 1 + len(world.ATTRIBUTES), world.CAPTION_LENGTH)
  np.testing.assert_array_equal(probes[:, 0], captions.render(t, a, styles))
  for i in range(0, 600, 13):
    truth = captions.parse(t, probes[i, 0])
    for j, name in enumerate(world.ATTRIBUTES):
      assert attr[i, 1 + j] == j
      changed = captions.parse(t, probes[i, 1 + j])
      differing = {k for k in world.ATTRIBUTES if changed[k] != truth[k]}
      assert differing == {name}


def test_paraphrase_pairs_join_two_styles_of_one_scene(scenes):
  t = world.make_tokenizer()
  pairs = captions.paraphrase_pairs(t, scenes._asdict(), np.random.default_rng(0))
  for i in range(0, 600, 17):
    row = pairs[i]
    assert row[0] == tok.BOS and np.sum(row == tok.SEP) == 1 and np.sum(row == tok.EOS) == 1
    sep = int(np.flatnonzero(row == tok.SEP)[0])
    first = t.decode(np.append(row[1:sep], tok.EOS))
    second = t.decode(row[sep + 1:])
    assert first != second
    assert captions.parse(t, t.encode(first)) == captions.parse(t, t.encode(second))


def test_tokenizer_round_trip():
  t = world.make_tokenizer()
  text = "a small red circle at the top left"
  ids = t.encode(text, length=12)
  assert ids.shape == (12,) and ids[8] == tok.EOS and t.decode(ids) == text
  assert t.vocab[:5] == tok.SPECIALS and t.id("nonsense") == tok.UNK
