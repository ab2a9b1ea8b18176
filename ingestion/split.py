"""The train / held-out split: one deterministic rule, shared by the data layer and the trainer.

A record's split is a pure function of its record id (the sha256 of its normalised text),
so it never changes when more data lands, a re-ingested record keeps its side, and the
trainer can recompute it without asking the orchestrator. Held-out records never reach
training because training filters with this same function.
"""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "heldout"]

#: Share of records held out for evaluation, in 1/10_000ths (5% by default).
HELDOUT_BASIS_POINTS = 500

_BUCKETS = 10_000


def split_of(record_id: str, heldout_basis_points: int = HELDOUT_BASIS_POINTS) -> Split:
    """Return ``"heldout"`` or ``"train"`` for a record id (64 lowercase hex characters).

    The bucket comes from the id's last 8 hex digits, which are uniformly distributed
    because the id is a cryptographic hash; no further hashing is needed.
    """
    if not 0 <= heldout_basis_points <= _BUCKETS:
        raise ValueError(
            f"heldout_basis_points must be within 0..{_BUCKETS}, got {heldout_basis_points}"
        )
    if len(record_id) < 8:
        raise ValueError(f"record_id must be a sha256 hex digest, got {record_id!r}")
    bucket = int(record_id[-8:], 16) % _BUCKETS
    return "heldout" if bucket < heldout_basis_points else "train"


def is_train(record_id: str, heldout_basis_points: int = HELDOUT_BASIS_POINTS) -> bool:
    return split_of(record_id, heldout_basis_points) == "train"
