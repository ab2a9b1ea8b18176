"""The sample corpus: generated tasks with checkable answers, so the demo runs offline.

Every record is one line ``Q: <question> A: <answer>``. The four task families follow
rules rather than facts (successor, reverse, sort, max), so a model that learns them
answers held-out questions it never saw; exact-match accuracy on the held-out split
then measures what training taught. ``parse_task`` splits a record into prompt and
expected answer for evaluation.

``python -m ingestion.sample --landing DIR`` writes the corpus as JSONL, CSV and Parquet
files; ``--defects`` adds a handful of malformed records and one unreadable file, so a
fresh install shows quarantine at work. It also writes the demo's task suite,
``DIR/evals/demo/tasks-seed<S>.jsonl`` (``prompt``, ``expected``, ``match``): fresh tasks
of the same families, drawn with another seed, which evaluation scores every model on
(``--suite-examples 0`` leaves it out). The families are rules, so a suite question may also
occur in the corpus; what the suite measures is whether the rule was learned.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SEPARATOR = " A:"


@dataclass(frozen=True)
class Task:
    prompt: str  # everything up to and including "A:"; the model continues from here
    answer: str  # the expected continuation, without the leading space


def _successor(rng: random.Random) -> tuple[str, str]:
    n = rng.randrange(0, 1000)
    return f"what comes after {n}?", str(n + 1)


def _reverse(rng: random.Random) -> tuple[str, str]:
    letters = rng.choices(string.ascii_lowercase, k=rng.randint(3, 5))
    return f"reverse {' '.join(letters)}", " ".join(reversed(letters))


def _sort(rng: random.Random) -> tuple[str, str]:
    digits = rng.choices(string.digits, k=rng.randint(3, 5))
    return f"sort {' '.join(digits)}", " ".join(sorted(digits))


def _maximum(rng: random.Random) -> tuple[str, str]:
    numbers = [str(rng.randrange(0, 100)) for _ in range(rng.randint(3, 5))]
    return f"max of {' '.join(numbers)}", str(max(int(n) for n in numbers))


TASK_FAMILIES = {"successor": _successor, "reverse": _reverse, "sort": _sort, "max": _maximum}


def format_record(question: str, answer: str) -> str:
    return f"Q: {question}{SEPARATOR} {answer}"


def parse_task(text: str) -> Task | None:
    """Split a sample record into prompt and answer; ``None`` if it is not a task record."""
    head, sep, answer = text.rpartition(SEPARATOR)
    if not sep or not head.startswith("Q: ") or not answer.startswith(" "):
        return None
    return Task(prompt=head + SEPARATOR, answer=answer.strip())


def generate_records(count: int, seed: int = 0) -> Iterator[dict[str, str]]:
    """Yield ``count`` records ``{"id", "source", "text"}``, deterministic for a seed."""
    rng = random.Random(seed)
    families = sorted(TASK_FAMILIES)
    for i in range(count):
        family = families[i % len(families)]
        question, answer = TASK_FAMILIES[family](rng)
        yield {
            "id": f"{family}-{seed}-{i}",
            "source": f"sample/{family}",
            "text": format_record(question, answer),
        }


def write_landing(
    landing: Path, count: int = 20_000, seed: int = 0, defects: bool = False
) -> list[Path]:
    """Write the sample corpus into ``landing`` as three files (JSONL, CSV, Parquet)."""
    landing.mkdir(parents=True, exist_ok=True)
    records = list(generate_records(count, seed))
    third = len(records) // 3
    parts = {
        "jsonl": records[:third],
        "csv": records[third : 2 * third],
        "parquet": records[2 * third :],
    }
    stem = f"sample-seed{seed}-n{count}"
    written = []

    jsonl = landing / f"{stem}.jsonl"
    with jsonl.open("w", encoding="utf-8") as f:
        for record in parts["jsonl"]:
            f.write(json.dumps(record) + "\n")
        if defects:
            f.write('{"id": "broken", "text": "unterminated\n')  # not valid JSON
            f.write(json.dumps({"id": "no-text", "source": "sample/defect"}) + "\n")
            f.write(json.dumps({"id": "blank", "text": "   "}) + "\n")
            f.write(json.dumps({"id": "number", "text": 42}) + "\n")
    written.append(jsonl)

    table = pa.Table.from_pylist(parts["csv"])
    csv_path = landing / f"{stem}.csv"
    pacsv.write_csv(table, csv_path)
    written.append(csv_path)

    parquet_path = landing / f"{stem}.parquet"
    pq.write_table(pa.Table.from_pylist(parts["parquet"]), parquet_path)
    written.append(parquet_path)

    if defects:
        bad = landing / f"{stem}-notes.txt"
        bad.write_text("an operator's note dropped in the wrong folder\n", encoding="utf-8")
        written.append(bad)
    return written


SUITE_SEED_OFFSET = 10_000  # suite tasks come from their own random stream


def write_eval_suite(landing: Path, count: int = 300, seed: int = 0) -> Path:
    """Write ``count`` generated tasks as the ``demo`` eval suite under ``landing/evals``."""
    suite = landing / "evals" / "demo"
    suite.mkdir(parents=True, exist_ok=True)
    path = suite / f"tasks-seed{seed}-n{count}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for record in generate_records(count, seed=seed + SUITE_SEED_OFFSET):
            task = parse_task(record["text"])
            assert task is not None, "generated records are tasks"
            f.write(json.dumps({"prompt": task.prompt, "expected": task.answer}) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--landing", type=Path, required=True, help="landing directory to write into"
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--defects", action="store_true", help="add malformed records and one bad file"
    )
    parser.add_argument(
        "--suite-examples", type=int, default=300, help="tasks in the demo eval suite (0: none)"
    )
    args = parser.parse_args(argv)
    for path in write_landing(args.landing, args.records, args.seed, args.defects):
        print(path)
    if args.suite_examples > 0:
        print(write_eval_suite(args.landing, args.suite_examples, args.seed))


if __name__ == "__main__":
    main()
