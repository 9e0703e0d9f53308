"""The testbed's character tokenizer, shipped in code (no files, no downloads)."""
from __future__ import annotations

from typing import Sequence

PAD, BOS, EOS = 0, 1, 2
_SPECIALS = ("<pad>", "<bos>", "<eos>")
_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz,:+-=|>?. "


class CharTokenizer:
  """Maps each character of a fixed alphabet to one id; ids 0/1/2 are pad/bos/eos."""

  pad_id, bos_id, eos_id = PAD, BOS, EOS

  def __init__(self, chars: str = _CHARS, vocab_size: int = 64):
    self.chars = chars
    self._to_id = {c: i + len(_SPECIALS) for i, c in enumerate(chars)}
    if len(_SPECIALS) + len(chars) > vocab_size:
      raise ValueError(f"alphabet of {len(chars)} chars does not fit vocab_size={vocab_size}")
    self.vocab_size = vocab_size

  def encode(self, text: str) -> list[int]:
    try:
      return [self._to_id[c] for c in text]
    except KeyError as e:
      raise ValueError(f"character {e.args[0]!r} in {text!r} is not in the testbed alphabet "
                       f"{self.chars!r}") from None

  def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == EOS and stop_at_eos:
        break
      if i >= len(_SPECIALS) and i - len(_SPECIALS) < len(self.chars):
        out.append(self.chars[i - len(_SPECIALS)])
    return "".join(out)


class TestbedTokenizer(CharTokenizer):
  """The prompt/completion protocol every tokenizer in prefjax follows.

  ``encode_prompt(text)`` returns the ids that precede the completion (BOS + prompt + the
  turn separator ">"); ``encode_completion(text)`` returns the completion's ids + EOS.
  """
  SEP = ">"
  __test__ = False  # not a pytest class

  def encode_prompt(self, prompt: str) -> list[int]:
    return [BOS] + self.encode(prompt + self.SEP)

  def encode_completion(self, text: str) -> list[int]:
    return self.encode(text) + [EOS]
