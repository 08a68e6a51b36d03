"""A word-level caption tokenizer with a closed, deterministic vocabulary.

The synthetic world's captions use a few dozen words, so a word-level
vocabulary is exact (no unknown words) and keeps sequences short. Ids 0-4 are
reserved: PAD, BOS, EOS, SEP (joins two paraphrases in LM pretraining and
separates the visual prefix from the caption), UNK.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

PAD, BOS, EOS, SEP, UNK = 0, 1, 2, 3, 4
SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>", "<unk>")


class Tokenizer:
  """Maps words to ids and back; immutable after construction."""

  def __init__(self, words: Iterable[str]):
    unique = sorted(set(words) - set(SPECIALS))
    self._vocab = SPECIALS + tuple(unique)
    self._ids = {w: i for i, w in enumerate(self._vocab)}

  @property
  def vocab(self) -> tuple[str, ...]:
    return self._vocab

  @property
  def vocab_size(self) -> int:
    return len(self._vocab)

  def id(self, word: str) -> int:
    return self._ids.get(word, UNK)

  def ids(self, words: Sequence[str]) -> np.ndarray:
    return np.array([self.id(w) for w in words], np.int32)

  def encode(self, text: str, length: int | None = None, eos: bool = True) -> np.ndarray:
    """Whitespace-split words -> ids (+ EOS), padded with PAD to ``length``."""
    ids = [self.id(w) for w in text.split()] + ([EOS] if eos else [])
    if length is not None:
      if len(ids) > length:
        raise ValueError(f"text needs {len(ids)} tokens, more than length={length}")
      ids += [PAD] * (length - len(ids))
    return np.array(ids, np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> text, stopping at EOS and skipping PAD/BOS."""
    words = []
    for i in np.asarray(ids).tolist():
      if i == EOS:
        break
      if i in (PAD, BOS):
        continue
      words.append(self._vocab[i])
    return " ".join(words)
