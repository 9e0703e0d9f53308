"""Response features c(y) whose reward bias b(c) gets calibrated: length, tokens, markdown.

Each feature maps a sequence of texts to a ``[N]`` float64 numpy array (text handling is host
work; the calibration itself runs in JAX). ``get(name)`` looks a feature up by name.

Reference: Huang et al., "Post-hoc Reward Calibration: A Case Study on Length Bias",
arXiv 2409.17407 (length in characters/tokens; markdown elements as a second bias).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import numpy as np

_HEADER = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_LIST_ITEM = re.compile(r"^\s*([-*+]|\d{1,9}[.)])\s+\S")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")  # "---" is a rule, not a list item


def char_length(texts: Iterable[str]) -> np.ndarray:
  """c(y) = number of characters (Unicode code points). Returns ``[N]``."""
  return np.asarray([len(t) for t in texts], dtype=np.float64)


def token_length(texts: Iterable[str],
                 tokenize: Callable[[str], Sequence] | None = None) -> np.ndarray:
  """c(y) = number of tokens; whitespace tokens unless ``tokenize`` (str -> list) is given.

  Args:
    texts: N response strings.
    tokenize: e.g. ``lambda s: hf_tokenizer(s)["input_ids"]``; default ``str.split``.

  Returns:
    ``[N]`` token counts.
  """
  tokenize = tokenize or str.split
  return np.asarray([len(tokenize(t)) for t in texts], dtype=np.float64)


def markdown_counts(text: str) -> dict[str, int]:
  """Counts of markdown elements: headers, list items, bold spans, fenced code blocks.

  Lines inside a fenced code block count only toward ``code_blocks`` (a ``# comment`` in
  code is not a header). An unclosed fence still counts as one block.
  """
  counts = {"headers": 0, "list_items": 0, "bold": 0, "code_blocks": 0}
  in_code = False
  for line in text.splitlines():
    if _FENCE.match(line):
      if not in_code:
        counts["code_blocks"] += 1
      in_code = not in_code
      continue
    if in_code:
      continue
    if _HEADER.match(line):
      counts["headers"] += 1
    elif _LIST_ITEM.match(line) and not _RULE.match(line):
      counts["list_items"] += 1
    counts["bold"] += len(_BOLD.findall(line))
  return counts


def markdown_elements(texts: Iterable[str]) -> np.ndarray:
  """c(y) = total markdown elements (headers + list items + bold + code blocks). ``[N]``."""
  return np.asarray([sum(markdown_counts(t).values()) for t in texts], dtype=np.float64)


_FEATURES: dict[str, Callable[[Iterable[str]], np.ndarray]] = {}


def register(name: str, fn: Callable[[Iterable[str]], np.ndarray]) -> None:
  """Adds a text feature under ``name``; a duplicate name raises."""
  if name in _FEATURES:
    raise ValueError(f"feature {name!r} is already registered")
  _FEATURES[name] = fn


def get(name: str) -> Callable[[Iterable[str]], np.ndarray]:
  """The text feature registered as ``name`` (KeyError lists the known names)."""
  if name not in _FEATURES:
    raise KeyError(f"unknown feature {name!r}; known: {sorted(_FEATURES)}")
  return _FEATURES[name]


def names() -> list[str]:
  return sorted(_FEATURES)


register("chars", char_length)
register("tokens", token_length)
register("markdown", markdown_elements)
