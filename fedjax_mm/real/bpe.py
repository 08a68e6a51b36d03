"""The byte-level BPE tokenizer of a GGUF file, rebuilt with HF ``tokenizers``.

A GGUF whose ``tokenizer.ggml.model`` is ``"gpt2"`` carries a byte-level BPE
(Sennrich et al. 2016; Radford et al. 2019): ``tokenizer.ggml.tokens`` (the
vocabulary, index = id, bytes mapped to printable unicode as in GPT-2),
``tokenizer.ggml.merges`` (ranked ``"a b"`` pairs), ``tokenizer.ggml.token_type``
(3 = control/special) and ``tokenizer.ggml.pre`` naming the pre-tokenizer.

SmolLM2's ``pre`` is ``"smollm"``, which llama.cpp treats like StarCoder: split
every digit on its own, then GPT-2's regex (contractions, `` ?letters``,
`` ?digits``, `` ?other``, whitespace runs) with no prefix space. That is
``Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False)])``
here, with a ByteLevel decoder. Control tokens are registered as special tokens
(``decode`` drops them), but by default text that *spells* one is encoded as
plain text: a caption containing ``<|im_end|>`` or ``<|endoftext|>`` must not
inject the pad/stop id. Callers add control ids themselves (from
:class:`SpecialTokens`); ``parse_special=True`` restores llama.cpp's chat-prompt
parsing. BOS is never inserted by the tokenizer: callers follow
:attr:`SpecialTokens.add_bos`.

References:
  Sennrich et al., "Neural Machine Translation of Rare Words with Subword
  Units", ACL 2016; Radford et al., "Language Models are Unsupervised Multitask
  Learners" (GPT-2), 2019; Allal et al., "SmolLM2: When Smol Goes Big", 2025.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from fedjax_mm.real.gguf_file import GGUFFile

_CONTROL = 3  # llama.cpp token type of control (special) tokens

# Pre-tokenizer names (tokenizer.ggml.pre) whose llama.cpp regex is
# "each digit alone, then the GPT-2 regex"; "gpt2"/"default" omit the digit split.
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone",
                    "minerva")
_GPT2_PRE = ("gpt2", "default", "gpt-2")


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Special token ids from GGUF metadata (``None`` where absent).

  Attributes:
    bos: ``tokenizer.ggml.bos_token_id`` (SmolLM2: 1 = ``<|im_start|>``).
    eos: ``tokenizer.ggml.eos_token_id`` (SmolLM2: 2 = ``<|im_end|>``).
    pad: ``tokenizer.ggml.padding_token_id``.
    unk: ``tokenizer.ggml.unknown_token_id``.
    add_bos: ``tokenizer.ggml.add_bos_token``: whether plain text is prefixed
      with ``bos`` (SmolLM2: False).
    im_start: id of ``<|im_start|>`` (chat turns), if in the vocabulary.
    im_end: id of ``<|im_end|>``, if in the vocabulary.
    endoftext: id of ``<|endoftext|>`` (document separator), if present.
  """
  bos: int | None
  eos: int | None
  pad: int | None
  unk: int | None
  add_bos: bool
  im_start: int | None = None
  im_end: int | None = None
  endoftext: int | None = None

  def stop_ids(self) -> tuple[int, ...]:
    """Tokens that end a generation: eos, ``<|im_end|>``, ``<|endoftext|>``."""
    ids = (self.eos, self.im_end, self.endoftext)
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _DIGIT_SPLIT_PRE:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  if pre in _GPT2_PRE:
    return byte_level
  raise NotImplementedError(f"tokenizer.ggml.pre={pre!r} is not supported")


def special_tokens(meta: dict[str, Any]) -> SpecialTokens:
  """Reads :class:`SpecialTokens` from GGUF metadata."""
  vocab = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}

  def tid(key: str) -> int | None:
    value = meta.get(f"tokenizer.ggml.{key}_token_id")
    return None if value is None else int(value)

  return SpecialTokens(
      bos=tid("bos"), eos=tid("eos"), pad=tid("padding"), unk=tid("unknown"),
      add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
      im_start=vocab.get("<|im_start|>"), im_end=vocab.get("<|im_end|>"),
      endoftext=vocab.get("<|endoftext|>"))


def tokenizer_from_metadata(meta: dict[str, Any], parse_special: bool = False
                            ) -> tokenizers.Tokenizer:
  """Builds the tokenizer described by GGUF metadata.

  Args:
    meta: GGUF metadata (the ``tokenizer.ggml.*`` keys).
    parse_special: encode control-token text (``"<|im_start|>"``) as that
      token's id, for trusted chat templates. Default: all text is text.
  """
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise NotImplementedError(f"only byte-level BPE ('gpt2') is supported, got {kind!r}")
  tokens = list(meta["tokenizer.ggml.tokens"])
  types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
  vocab = {t: i for i, t in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ValueError("tokenizer.ggml.tokens has duplicate entries")
  # Byte-level symbols never contain a literal space, so one split is exact.
  merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
  tok.decoder = decoders.ByteLevel()
  specials = [tokenizers.AddedToken(t, special=True, normalized=False)
              for t, kind in zip(tokens, types) if kind == _CONTROL]
  tok.add_special_tokens(specials)
  # Matched added tokens would bypass the BPE: with this flag they are ordinary text.
  tok.encode_special_tokens = not parse_special
  return tok


def load_tokenizer(path: str | os.PathLike, parse_special: bool = False
                   ) -> tokenizers.Tokenizer:
  """The byte-level BPE tokenizer stored in GGUF file ``path``.

  ``encode`` never adds BOS/EOS (no post-processor) and, unless
  ``parse_special``, treats control-token text as text; ``decode`` drops
  special tokens unless ``skip_special_tokens=False``.
  """
  return tokenizer_from_metadata(GGUFFile(path).metadata, parse_special)


def load_special_tokens(path: str | os.PathLike) -> SpecialTokens:
  """The :class:`SpecialTokens` of GGUF file ``path``."""
  return special_tokens(GGUFFile(path).metadata)


def encode(tokenizer: tokenizers.Tokenizer, special: SpecialTokens, text: str) -> list[int]:
  """Token ids of plain ``text``, BOS-prefixed iff the GGUF asks (``add_bos``).

  SmolLM2 sets ``add_bos_token`` False (its BOS id 1 is ``<|im_start|>``, a chat
  marker), so plain text is encoded as is.
  """
  ids = tokenizer.encode(text).ids
  return [special.bos, *ids] if special.add_bos and special.bos is not None else ids
