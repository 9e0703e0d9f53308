"""File data sources: a spec string -> training examples of one kind.

    result = load_examples("hh:../shared/data/hh-rlhf/harmless-base_test.jsonl.gz",
                           "pairwise", seed=0)
    train, held_out = split_heldout(result.examples, n_eval=300, seed=0)

Kinds (the dicts the encoders of ``prefjax.data.pipeline`` take):

  ``sft``       ``{"id", "prompt", "response"}``
  ``pairwise``  ``{"id", "prompt", "chosen", "rejected"[, "alpha"]}``
  ``multi``     ``{"id", "prompt", "chosen": [...], "rejected": [...]}`` (best first / worst first)
  ``unpaired``  ``{"id", "prompt", "response", "label"}`` (label 1 desirable, 0 not)

``prompt`` is a string, or a list of ``{"role", "content"}`` messages for chat data (HH
transcripts, ``messages`` rows) so that the tokenizer's chat template applies; with
``chat=True`` (default) responses are stripped of surrounding whitespace, as a chat template
writes an assistant turn. ``chat=False`` keeps raw text (HH's ``"\\n\\nHuman: ..."``
transcript as the prompt) for tokenizers without a template.

Specs (a registry keyed by prefix; ``SOURCES``):

  any ``read_preferences`` spec (``hh:``, ``pandalm:``, ``llmbar:``, ``alpaca_eval:``,
  ``jsonl:``, ``implicit:`` or a plain path)  -> pairs
  ``hf:PATH``            a Hugging Face ``datasets`` folder (``save_to_disk``) or parquet /
                         JSON files in TRL's preference formats (``prefjax.data.hf_datasets``)
                         -> pairs
  ``sft:PATH``           JSON Lines ``{"prompt", "response" | "completion"}`` or ``{"messages":
                         [...]}`` (the last message, an assistant turn, is the response)
  ``groups:PATH``        ``{"prompt", "responses": [...], "scores" | "ranks": [...]}`` or
                         ``{"prompt", "chosen": [...], "rejected": [...]}``  -> groups
  ``alpaca_eval_groups:DIR_OR_GLOB``  AlpacaEval annotations grouped by instruction -> groups
  ``unpaired:PATH``      ``{"prompt", "response" | "completion", "label"}``

Conversions (``CONVERSIONS``; anything else raises ``DataError``): pairs -> sft (the chosen
response), pairs -> unpaired (chosen label 1, rejected label 0, as TRL's
``unpair_preference_dataset``), groups -> pairwise (the best chosen response against a seeded
random rejected one, as UltraFeedback's binarisation), groups -> sft (the best chosen
response), groups -> unpaired (every chosen 1, every rejected 0).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Callable, Sequence

import numpy as np

from prefjax.data import hf_datasets, records
from prefjax.data.preference_files import FORMATS
from prefjax.errors import DataError

KINDS = ("sft", "pairwise", "multi", "unpaired")


@dataclasses.dataclass
class SourceResult:
  """What ``load_examples`` read.

  Attributes:
    examples: example dicts of the requested kind.
    skipped: ``{reason: count}`` of source rows that could not be used.
    skipped_rows: ``(location, reason)`` of the first skipped rows (``"file:line"``).
    source: the spec.
    native: what the file holds (``"pairs"``, ``"groups"``, ``"sft"``, ``"unpaired"``).
  """
  examples: list
  skipped: dict
  skipped_rows: list
  source: str
  native: str = ""

  def summary(self, limit: int = 5) -> str:
    lines = [f"{self.source} ({self.native}): {len(self.examples)} examples, "
             f"{sum(self.skipped.values())} rows skipped"]
    lines += [f"  {n} x {r}" for r, n in sorted(self.skipped.items(), key=lambda kv: -kv[1])]
    lines += [f"  e.g. {loc}: {r}" for loc, r in self.skipped_rows[:limit]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ readers
SOURCES: dict[str, tuple[str, Callable]] = {}   # prefix -> (native kind, reader)


def register_source(prefix: str, native: str):
  """Registers ``reader(path, *, chat) -> Raw`` for specs ``prefix:PATH``."""
  def deco(fn):
    if prefix in SOURCES or prefix in FORMATS:
      raise ValueError(f"a data source {prefix!r} is already registered")
    SOURCES[prefix] = (native, fn)
    return fn
  return deco


for _prefix, _native, _reader in (
    ("sft", "sft", records.read_sft), ("unpaired", "unpaired", records.read_unpaired),
    ("groups", "groups", records.read_groups),
    ("alpaca_eval_groups", "groups", records.read_alpaca_eval_groups),
    ("hf", "pairs", hf_datasets.read_hf_pairs)):
  register_source(_prefix, _native)(_reader)


# ------------------------------------------------------------------------------ conversions
def _pairs_to_sft(exs, rng):
  return [{"id": e["id"], "prompt": e["prompt"], "response": e["chosen"]} for e in exs]


def _pairs_to_unpaired(exs, rng):
  return [{"id": f"{e['id']}-{side}", "prompt": e["prompt"], "response": e[side],
           "label": label} for e in exs for side, label in (("chosen", 1), ("rejected", 0))]


def _groups_to_pairs(exs, rng):
  return [{"id": e["id"], "prompt": e["prompt"], "chosen": e["chosen"][0],
           "rejected": e["rejected"][int(rng.integers(len(e["rejected"])))]} for e in exs]


def _groups_to_sft(exs, rng):
  return [{"id": e["id"], "prompt": e["prompt"], "response": e["chosen"][0]} for e in exs]


def _groups_to_unpaired(exs, rng):
  return [{"id": f"{e['id']}-{side}{j}", "prompt": e["prompt"], "response": y, "label": label}
          for e in exs for side, label in (("chosen", 1), ("rejected", 0))
          for j, y in enumerate(e[side])]


def _same(exs, rng):
  return list(exs)


CONVERSIONS = {
    ("pairs", "pairwise"): _same, ("pairs", "sft"): _pairs_to_sft,
    ("pairs", "unpaired"): _pairs_to_unpaired,
    ("groups", "multi"): _same, ("groups", "pairwise"): _groups_to_pairs,
    ("groups", "sft"): _groups_to_sft, ("groups", "unpaired"): _groups_to_unpaired,
    ("sft", "sft"): _same, ("unpaired", "unpaired"): _same,
}


def trim_groups(examples, group_size: int):
  """Each side cut to its ``group_size`` most decisive members (sides are sorted best chosen
  first, worst rejected first)."""
  return [dict(e, chosen=e["chosen"][:group_size], rejected=e["rejected"][:group_size])
          for e in examples]


def split_source_spec(spec: str):
  """``(prefix, path)`` for a registered prefix, else ``(None, spec)`` (a pairs spec)."""
  m = re.match(r"^(\w+):(.+)$", spec, re.S)
  if m and m.group(1) in SOURCES:
    return m.group(1), m.group(2)
  return None, spec


def load_examples(spec: str, kind: str, *, seed: int, limit: int | None = None,
                  chat: bool = True, group_size: int | None = None) -> SourceResult:
  """Reads ``spec`` and returns examples of ``kind`` (see the module docstring).

  Args:
    spec: a data spec; a prefix of ``SOURCES`` or a ``read_preferences`` spec.
    kind: one of ``KINDS``.
    seed: seeds the random choices of conversions (groups -> pairs).
    limit: keep the first ``limit`` source records (pairs, groups, rows) in file order.
    chat: chat prompts as messages and stripped responses (see the module docstring).
    group_size: cut each side of a group to its ``group_size`` most decisive members.

  Raises:
    DataError: one line: a bad kind, a conversion that does not exist, a file that cannot
      be read, or a file with no usable row (naming it and the top skip reasons).
  """
  if kind not in KINDS:
    raise DataError(f"{spec}: unknown example kind {kind!r}; expected one of {KINDS}")
  prefix, path = split_source_spec(str(spec))
  if prefix is None:
    raw = records.read_pairs(path, chat=chat)
  else:
    raw = SOURCES[prefix][1](path, chat=chat)
  if not raw.records:
    top = ", ".join(f"{n} x {r}" for r, n in raw.skipped.most_common(3))
    raise DataError(f"{spec}: no usable row ({sum(raw.skipped.values())} skipped: "
                    f"{top or 'the file holds no rows'})")
  convert = CONVERSIONS.get((raw.native, kind))
  if convert is None:
    can = sorted(k for (n, k) in CONVERSIONS if n == raw.native)
    raise DataError(f"{spec}: holds {raw.native} examples, which cannot be used for {kind!r} "
                    f"examples (possible: {', '.join(can)})")
  kept = raw.records[:limit] if limit is not None else raw.records
  if raw.native == "groups" and group_size is not None:
    kept = trim_groups(kept, group_size)
  examples = convert(kept, np.random.default_rng(seed))
  return SourceResult(examples=examples, skipped=dict(raw.skipped),
                      skipped_rows=list(raw.skipped_rows), source=str(spec), native=raw.native)


def wants_chat(tokenizer) -> bool:
  """``chat=`` for ``load_examples``: True when the tokenizer has a chat template (message
  prompts, stripped responses), False for raw-text tokenizers (testbed, byte-level)."""
  return bool(getattr(tokenizer, "chat_template", None))


# ------------------------------------------------------------------------------ held out
def prompt_key(example: dict) -> str:
  p = example["prompt"]
  return p if isinstance(p, str) else json.dumps(p, sort_keys=True)


def example_kind(example: dict) -> str:
  """The kind of an example dict, told from its keys."""
  if "label" in example:
    return "unpaired"
  if "chosen" in example:
    return "pairwise" if isinstance(example["chosen"], str) else "multi"
  return "sft"


def split_heldout(examples: Sequence[dict], *, eval_spec: str | None = None,
                  n_eval: int | None = None, fraction: float = 0.1, seed: int,
                  kind: str | None = None, chat: bool = True):
  """``(train, eval)`` examples; no prompt is on both sides.

  With ``eval_spec``, eval is that file (its first ``n_eval`` records when given) and train
  drops every example whose prompt the eval file holds. Otherwise whole prompts (all the
  examples sharing one) are drawn in a ``seed``-ed random order until eval holds at least
  ``n_eval`` examples (default ``round(fraction * len(examples))``).

  Raises:
    DataError: the held-out part would leave no training example.
  """
  examples = list(examples)
  if eval_spec is not None:
    kind = kind or (example_kind(examples[0]) if examples else "pairwise")
    held = load_examples(eval_spec, kind, seed=seed, limit=n_eval, chat=chat).examples
    keys = {prompt_key(e) for e in held}
    train = [e for e in examples if prompt_key(e) not in keys]
  else:
    target = n_eval if n_eval is not None else int(round(fraction * len(examples)))
    by_prompt = collections.defaultdict(list)
    for i, e in enumerate(examples):
      by_prompt[prompt_key(e)].append(i)
    order = list(by_prompt)
    held_idx = set()
    for j in np.random.default_rng(seed).permutation(len(order)):
      if len(held_idx) >= target:
        break
      held_idx.update(by_prompt[order[j]])
    held = [e for i, e in enumerate(examples) if i in held_idx]
    train = [e for i, e in enumerate(examples) if i not in held_idx]
  if not train:
    raise DataError(f"holding out {len(held)} examples leaves none to train on "
                    f"({len(examples)} examples)")
  return train, held
