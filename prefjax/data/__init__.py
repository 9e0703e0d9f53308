"""Data: readers for real preference datasets, file data sources, encoders and batching."""
from prefjax.data.collate import (
    COMPLETION_POLICIES, TRUNCATION_POLICIES, CompletionTooLong, PolicyError, PromptTooLong,
    RowSkipped)
from prefjax.data.pipeline import (
    BATCH_METRICS, batch_metrics, bucket_lengths, filter_examples)
from prefjax.data.preference_files import (
    FORMATS,
    PreferenceFileError,
    ReadResult,
    read_preferences,
    read_rows,
    split_spec,
)
from prefjax.data.hf_datasets import read_hf
from prefjax.data.preference_formats import PreferenceExample, hh_chat
from prefjax.data.prompts import PromptItem, read_prompts_file
from prefjax.data.file_sources import (
    CONVERSIONS, KINDS, SOURCES, SourceResult, load_examples, register_source, split_heldout)

__all__ = [
    "BATCH_METRICS", "COMPLETION_POLICIES", "CONVERSIONS", "CompletionTooLong", "FORMATS",
    "KINDS", "PolicyError", "PreferenceExample", "PromptItem", "read_prompts_file", "PreferenceFileError", "PromptTooLong",
    "ReadResult", "RowSkipped", "SOURCES", "SourceResult", "TRUNCATION_POLICIES",
    "batch_metrics", "bucket_lengths", "filter_examples", "hh_chat", "load_examples",
    "read_hf", "read_preferences", "read_rows", "register_source", "split_heldout", "split_spec",
]
