"""Readers for real preference datasets (HH-RLHF, PandaLM, LLMBar, AlpacaEval, JSONL)."""
from prefjax.data.preference_files import (
    FORMATS,
    PreferenceFileError,
    ReadResult,
    read_preferences,
    split_spec,
)
from prefjax.data.preference_formats import PreferenceExample, hh_chat

__all__ = [
    "FORMATS", "PreferenceExample", "PreferenceFileError", "ReadResult", "hh_chat",
    "read_preferences", "split_spec",
]
