"""What an elastic job leaves for operators: its attempts and the samples each step trained on.

Every time the group forms (the first start, a restart after a crash, a re-formation
after a host was lost or joined) rank 0 appends one line to ``OUTPUT/attempts.jsonl``:
the attempt number, world size, number of hosts, the step it resumed from and the world
size of that checkpoint. The training summary carries the list, and the Dagster asset
reports world-size changes and recoveries from it.

Every rank appends one line per step to ``OUTPUT/samples/attempt<A>-rank<R>.jsonl``: the
step, epoch, offset, and the block ids it trained on. Lines are flushed at each step so a
SIGKILL loses none of the steps already covered by a checkpoint. Steps after the last
checkpoint of a failed attempt are trained again by the next attempt; ``committed_steps``
keeps, for each step, the records of the newest attempt that ran it, which is the history
the final weights came from.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from training.sampling import Slice

ATTEMPTS = "attempts.jsonl"
SAMPLES = "samples"

#: Bound of the phases where every rank waits for rank 0 alone (preparing the run:
#: tokenizer training, data checks; exporting the model). They take far longer than a
#: training collective, whose timeout is kept short so a silent host is noticed quickly.
RANK0_PHASE_TIMEOUT = timedelta(minutes=30)


def wait_for_rank0(rank: int, world_size: int, phase: str) -> None:
    """Block until rank 0 finished ``phase``, for at most ``RANK0_PHASE_TIMEOUT``.

    A key in the process group's store, not a collective: gloo applies the group's
    (short) timeout to every send and receive, a barrier and ``monitored_barrier`` included.
    """
    if world_size == 1:
        return
    store = dist.distributed_c10d._get_default_store()
    key = f"sovereign/rank0-finished/{phase}"
    if rank == 0:
        store.set(key, b"1")
    else:
        store.wait([key], RANK0_PHASE_TIMEOUT)


def next_attempt(output: Path) -> int:
    return len(read_attempts(output))


def record_attempt(output: Path, entry: dict[str, Any]) -> None:
    """Append one attempt (rank 0 only); a rewrite keeps the file whole if we die midway."""
    lines = [*read_attempts(output), entry]
    path = output / ATTEMPTS
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    os.replace(tmp, path)


def read_attempts(output: Path) -> list[dict[str, Any]]:
    path = output / ATTEMPTS
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def hosts_in_group() -> int:
    """Hosts (torchrun agents) in this group; 1 without torchrun."""
    return int(os.environ.get("GROUP_WORLD_SIZE", "1"))


class SampleLog:
    """This rank's per-step record of the blocks it trained on, for one attempt."""

    def __init__(self, output: Path, attempt: int, rank: int, world_size: int) -> None:
        folder = output / SAMPLES
        folder.mkdir(parents=True, exist_ok=True)
        self.attempt, self.rank, self.world_size = attempt, rank, world_size
        self._file = (folder / f"attempt{attempt:04d}-rank{rank}.jsonl").open("a", encoding="utf-8")

    def record(self, step: int, s: Slice) -> None:
        line = {
            "step": step,
            "attempt": self.attempt,
            "epoch": s.epoch,
            "start": s.start,
            "size": s.size,
            "rank": self.rank,
            "world_size": self.world_size,
            "ids": s.ids,
            "t": round(time.time(), 4),
        }
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def committed_steps(output: Path) -> dict[int, list[dict[str, Any]]]:
    """Step -> every rank's record of it, from the newest attempt that ran that step."""
    by_attempt: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((output / SAMPLES).glob("attempt*-rank*.jsonl")):
        attempt = int(path.name[len("attempt") :].split("-")[0])
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                by_attempt[attempt][record["step"]].append(record)
    steps: dict[int, list[dict[str, Any]]] = {}
    for attempt in sorted(by_attempt):
        steps.update(by_attempt[attempt])
    return {step: sorted(steps[step], key=lambda r: r["rank"]) for step in sorted(steps)}


def membership(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """World sizes over time and how often the group re-formed, for the summary and Dagster."""
    sizes = [a["world_size"] for a in attempts]
    changes = sum(1 for a, b in zip(sizes, sizes[1:], strict=False) if a != b)
    return {
        "attempts": attempts,
        "world_sizes": sizes,
        "world_size_changes": changes,
        "recoveries": max(0, len(attempts) - 1),
    }
