"""The ingestion contract: what is accepted, what is refused and why, as named reason codes.

Input is a landing directory of ``.jsonl``, ``.csv`` and ``.parquet`` files. Each record has
a required string ``text`` and optional ``id``, ``source``, ``created_at``; optional values
are stored as strings (a non-string scalar becomes ``str(value)``, a JSON array or object
its compact JSON text, an empty string null).

Record level (the record goes to quarantine with one of these codes, the file goes on):
``invalid_json`` (not JSON, or JSON but not an object), ``invalid_utf8`` (bytes that are not
UTF-8, or an unpaired surrogate escape), ``missing_text`` (absent or null), ``text_not_string``,
``empty_text`` (empty or whitespace only), ``text_too_long`` (more than ``max_text_chars``
characters after normalising line endings), ``line_too_long`` (a JSONL line too long to hold
in memory), ``expectation_failed`` (the record's batch failed the validation suite).

A record whose normalised text is already in the corpus, or earlier in the same run, is a
*duplicate*: counted, not stored again, not an error. Blank (whitespace-only) JSONL lines are
skipped and not counted; they still count for line numbers, so ``source_row`` is the 1-based
line number in JSONL, the 1-based data row (header excluded) in CSV, the 1-based row in Parquet.

File level (the whole file is refused with ONE quarantine row whose ``source_row`` is null, and
nothing from it reaches the corpus): ``empty_file``, ``unsupported_extension``,
``unparseable_file`` (CSV or Parquet without a ``text`` column or with a non-string one,
truncated or corrupt Parquet, CSV that is not UTF-8 or has a malformed row), ``symlink``,
``outside_landing``, ``unreadable_file`` (the operating system refused to read it; not
recorded in the ledger, so it is retried once readable). A refused file counts 0 records read,
0 accepted, 0 duplicates and 0 quarantined: its one quarantine row describes the file, not a
record. For every other file ``records_read == accepted + duplicates + quarantined``.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    MISSING_TEXT = "missing_text"
    TEXT_NOT_STRING = "text_not_string"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    LINE_TOO_LONG = "line_too_long"
    EXPECTATION_FAILED = "expectation_failed"
    EMPTY_FILE = "empty_file"
    UNSUPPORTED_EXTENSION = "unsupported_extension"
    UNPARSEABLE_FILE = "unparseable_file"
    SYMLINK = "symlink"
    OUTSIDE_LANDING = "outside_landing"
    UNREADABLE_FILE = "unreadable_file"
    DEAD_LETTERED = "dead_lettered"  # a streamed message whose processing failed max_deliver times


#: What to tell the operator for each record-level code; file-level reasons are built per file.
RECORD_REASONS: dict[ReasonCode, str] = {
    ReasonCode.INVALID_JSON: "line is not a JSON object; write one JSON object per line",
    ReasonCode.INVALID_UTF8: "record is not valid UTF-8; re-export it as UTF-8",
    ReasonCode.MISSING_TEXT: "record has no 'text' value; add the text or drop the record",
    ReasonCode.TEXT_NOT_STRING: "'text' is not a string; store the text as a JSON string",
    ReasonCode.EMPTY_TEXT: "'text' is empty or whitespace only; drop the record or fill it",
    ReasonCode.TEXT_TOO_LONG: "'text' is longer than max_text_chars; split the document",
    ReasonCode.LINE_TOO_LONG: "line is longer than the reader holds in memory; split the record",
}

SUPPORTED_EXTENSIONS = (".jsonl", ".csv", ".parquet")

#: The record fields read from every format; anything else in a file is ignored.
OPTIONAL_FIELDS = ("id", "source", "created_at")


class FileRejected(Exception):
    """A whole file is refused; carries the reason code and a sentence for the operator."""

    def __init__(self, code: ReasonCode, reason: str, excerpt: str = "") -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.excerpt = excerpt
