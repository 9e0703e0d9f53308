"""A byte-level tokenizer for real text (UTF-8 bytes), shipped in code: no files, no downloads.

Ids 0/1/2 are pad/bos/eos and byte b is id b + 3 (vocab 259, rounded up to 260). It follows
the protocol of every prefjax tokenizer: ``encode_prompt(text)`` = BOS + the prompt's bytes
+ the turn separator (an HH-RLHF transcript, so bare instructions get
the "Human:" turn too); ``encode_completion(text)`` = the completion's bytes + EOS.

Used for small models trained from scratch on real preference data (HH-RLHF) on a CPU,
where a learnt BPE vocabulary is not worth its size.
"""
from __future__ import annotations

from typing import Sequence

PAD, BOS, EOS = 0, 1, 2
_OFFSET = 3


class ByteTokenizer:
  """UTF-8 bytes + 3 specials. ``decode`` drops specials and replaces invalid UTF-8."""

  pad_id, bos_id, eos_id = PAD, BOS, EOS
  vocab_size = 260
  SEP = "\n\nAssistant:"

  def encode(self, text: str) -> list[int]:
    return [b + _OFFSET for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
    out = bytearray()
    for i in ids:
      i = int(i)
      if i == EOS and stop_at_eos:
        break
      if _OFFSET <= i < 256 + _OFFSET:
        out.append(i - _OFFSET)
    return out.decode("utf-8", errors="replace")

  def encode_prompt(self, prompt: str) -> list[int]:
    """BOS + HH-style transcript: a bare instruction becomes "\n\nHuman: " + it + SEP."""
    if not prompt.startswith("\n\nHuman:"):
      prompt = "\n\nHuman: " + prompt
    if not prompt.endswith(self.SEP):
      prompt = prompt + self.SEP
    return [BOS] + self.encode(prompt)

  def encode_completion(self, text: str) -> list[int]:
    return self.encode(text) + [EOS]
