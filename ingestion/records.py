"""Record identity: text normalisation and the content-hash record id.

Two records are the same record when their texts are equal after normalising line
endings (CRLF and CR become LF). The record id is the sha256 of the normalised text,
UTF-8 encoded, as 64 lowercase hex characters; it is the corpus key and the input of
the train / held-out split.
"""

from __future__ import annotations

import hashlib


def normalise_text(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def record_id(normalised_text: str) -> str:
    return hashlib.sha256(normalised_text.encode("utf-8")).hexdigest()
