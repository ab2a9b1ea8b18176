"""The sample-accounting check shared by the multi-host tests (reads the run's sample log)."""

from __future__ import annotations

import json
from pathlib import Path

from training.elastic import committed_steps, read_attempts


def summary(output: Path) -> dict:
    return json.loads((output / "model" / "training_summary.json").read_text())


def assert_exact_accounting(output: Path, steps: int) -> dict[int, list[int]]:
    """Every committed step has all its ranks; each epoch trains each block at most once,
    and every finished epoch trained all of them. Returns epoch -> block ids in order."""
    committed = committed_steps(output)
    assert sorted(committed) == list(range(1, steps + 1)), "a step is missing from the log"
    by_epoch: dict[int, list[int]] = {}
    for step, records in committed.items():
        world = records[0]["world_size"]
        assert [r["rank"] for r in records] == list(range(world)), f"step {step}: {records}"
        assert len({(r["epoch"], r["start"], r["size"]) for r in records}) == 1
        ids = [i for r in records for i in r["ids"]]
        assert len(ids) == records[0]["size"], f"step {step} trained {len(ids)} blocks"
        by_epoch.setdefault(records[0]["epoch"], []).extend(ids)
    n = read_attempts(output)[0]["num_blocks"]
    for epoch, ids in by_epoch.items():
        assert len(ids) == len(set(ids)), f"epoch {epoch}: a block was trained on twice"
        if epoch < max(by_epoch):
            assert sorted(ids) == list(range(n)), f"epoch {epoch} missed blocks"
    return by_epoch
