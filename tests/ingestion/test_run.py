"""Per-file processing helpers (ingestion.run): within-batch dedupe keeps exactly the first
occurrence of each record digest, also when different digests share their 8-byte prefix."""

from __future__ import annotations

import numpy as np

from ingestion.run import first_occurrences


def test_first_occurrences_matches_a_set_scan():
    rng = np.random.default_rng(1)
    for trial in range(200):
        distinct = rng.integers(0, 256, (int(rng.integers(1, 50)), 32), dtype=np.uint8)
        if trial % 3 == 0:
            distinct[:, :8] = 7  # every digest shares one prefix
        picks = rng.integers(0, len(distinct), int(rng.integers(1, 80)))
        digests = np.ascontiguousarray(distinct[picks]).view("S32").ravel()
        seen: set[bytes] = set()
        expected = []
        for digest in (bytes(row) for row in distinct[picks]):
            expected.append(digest not in seen)
            seen.add(digest)
        assert first_occurrences(digests).tolist() == expected
