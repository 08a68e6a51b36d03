"""Template captions for image-label data ("A photo of an ankle boot.").

Holds the caption templates (:data:`TEMPLATES`, :data:`FASHION_TEMPLATES`),
the "a"/"an" and class-noun rules (:func:`with_article`, :func:`class_noun`)
and the seeded choice of a template per row (:func:`template_picks`,
:func:`template_captions`). Used by the Fashion-MNIST builder and by
:func:`fedjax_mm.data.real_sources.load_pairs`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TEMPLATES = ("A photo of {}.", "A picture of {}.", "An image of {}.")
FASHION_TEMPLATES = ("A photo of {}.", "A black and white picture of {}.",
                     "A grayscale photo of {}.", "A small product photo of {}.",
                     "A low resolution image of {}.")
_NOUNS = {"T-shirt/top": "T-shirt", "Trouser": "pair of trousers"}
# A vowel letter sounding like a consonant ("a unicorn"), a silent h ("an hour").
_CONSONANT_SOUND = ("eu", "one", "once", "uni", "use", "usu", "uti", "ubi")
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def with_article(noun: str) -> str:
  """``noun`` after "a" or "an" ("an ankle boot", "a T-shirt", "a unicorn")."""
  w = noun.lower()
  vowel = bool(w) and w[0] in "aeiou" and not w.startswith(_CONSONANT_SOUND)
  return ("an " if vowel or w.startswith(_SILENT_H) else "a ") + noun


def class_noun(name: str) -> str:
  """A class name as a caption noun ("Ankle boot" -> "ankle boot")."""
  return _NOUNS.get(name, name.replace("_", " ").lower())


def template_captions(labels: Sequence[int], class_names: Sequence[str],
                      templates: Sequence[str], picks: np.ndarray) -> list[str]:
  """``templates[picks[i]]`` filled with the article and noun of ``labels[i]``."""
  return [templates[t].format(with_article(class_noun(class_names[int(y)])))
          for t, y in zip(picks, labels)]


def template_picks(seed: int, count: int, num_templates: int) -> np.ndarray:
  """Template of each of ``count`` rows; slice it to read fewer (stable rows)."""
  return np.random.default_rng(seed).integers(num_templates, size=count)
