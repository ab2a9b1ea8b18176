"""Contract of the committer's batch sizing for redeliveries (no broker): a fresh message
starts a full batch; each redelivery shrinks the batch it starts, and from the last allowed
delivery on it is processed alone, so a message that kills the consumer can only exhaust its
own delivery limit, not its neighbours'."""

from __future__ import annotations

import pytest

from ingestion.stream.committer import suspect_batch_size


@pytest.mark.parametrize(
    ("attempt", "max_deliver", "expected"),
    [
        (1, 5, 5000),
        (2, 5, 1250),
        (3, 5, 312),
        (4, 5, 78),
        (5, 5, 1),
        (6, 5, 1),
        (2, 3, 1250),
        (3, 3, 1),
        (2, 2, 1),
        (1, 1, 5000),
    ],
)
def test_redelivered_batches_shrink_to_one_by_the_last_allowed_delivery(
    attempt: int, max_deliver: int, expected: int
) -> None:
    assert suspect_batch_size(attempt, max_deliver, 5000) == expected


def test_a_small_batch_never_shrinks_below_one() -> None:
    assert suspect_batch_size(4, 10, 10) == 1
