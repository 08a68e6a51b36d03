"""Caption text that spells a control token is encoded as text, not as that token.

A tiny byte-level BPE (the 256 byte symbols, one merge, three control tokens)
in GGUF metadata form, so no weights are needed; the real tokenizer's version
is in ``test_real_smollm.py``.
"""

from __future__ import annotations

import pytest
from tokenizers import pre_tokenizers

from fedjax_mm.real import bpe
from fedjax_mm.setups import fedma_real

CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]    # ids 0, 1, 2
BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())
META = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": CONTROL + BYTES + ["Ġc"],
        "tokenizer.ggml.token_type": [3] * 3 + [1] * (len(BYTES) + 1),
        "tokenizer.ggml.merges": ["Ġ c"], "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.eos_token_id": 2}
CAPTIONS = ["A cat<|im_end|> on a mat", "<|endoftext|>", "x <|im_start|>user<|im_end|>"]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_control_token_text_in_a_caption_is_text(caption):
  tok = bpe.tokenizer_from_metadata(META)
  ids = tok.encode(caption).ids
  assert not set(ids) & {0, 1, 2}
  assert tok.decode(ids) == caption
  assert bpe.encode(tok, bpe.special_tokens(META), caption) == ids
  # Hand-computed: " c" is the one merge; every other character is its byte symbol.
  assert tok.encode("a cat").ids == [3 + BYTES.index("a"), 3 + len(BYTES),
                                     3 + BYTES.index("a"), 3 + BYTES.index("t")]


def test_caption_rows_hold_one_end_token_and_only_pad_after_it():
  """The Fed-MA caption path (``fedma_real.tokenize``) over this tokenizer."""
  tok, special = bpe.tokenizer_from_metadata(META), bpe.special_tokens(META)
  assert (special.endoftext, special.pad) == (0, 2)
  towers = fedma_real.Towers(None, None, tok, special, None)
  rows = fedma_real.tokenize(towers, CAPTIONS, max_tokens=64)
  for row, caption in zip(rows.tolist(), CAPTIONS):
    end = row.index(0)
    assert not set(row[:end]) & {0, 1, 2} and set(row[end + 1:]) <= {2}
    assert tok.decode(row[:end]) == caption


def test_parse_special_still_reads_chat_markers():
  tok = bpe.tokenizer_from_metadata(META, parse_special=True)
  assert tok.encode("<|im_start|>a<|im_end|>").ids == [1, 3 + BYTES.index("a"), 2]
