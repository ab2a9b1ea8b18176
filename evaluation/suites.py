"""Task suites: prompts with expected answers, read from their versioned Delta tables.

A suite is one Delta table under ``$MLOPS_HOME/lake/evals/<suite>`` written by the eval-suite
ingestion (``ingestion/evals.py``). Each row is a prompt, the expected answer and how an
answer is matched:

* ``exact``: the answer equals ``expected`` (both stripped);
* ``prefix``: the answer starts with ``expected``;
* ``contains``: ``expected`` occurs in the answer;
* ``regex``: ``re.search(expected, answer)`` finds a match (anchor with ``^...$`` for a
  whole-answer match).

The answer is the model's greedy continuation of the prompt up to end of line or
end-of-sequence, stripped. Examples are ordered by ``example_id`` and bounded per suite, so
a suite at one version is the same list for every model and every rerun.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deltalake import DeltaTable

MATCH_KINDS = ("exact", "prefix", "contains", "regex")


class SuiteDataError(ValueError):
    """A suite table cannot be read."""


@dataclass(frozen=True)
class SuiteExample:
    suite: str
    example_id: str
    prompt: str
    expected: str
    match: str = "exact"

    def __post_init__(self) -> None:
        if self.match not in MATCH_KINDS:
            raise ValueError(f"match={self.match!r} must be one of {MATCH_KINDS}")

    def is_correct(self, answer: str) -> bool:
        answer, expected = answer.strip(), self.expected.strip()
        if self.match == "exact":
            return answer == expected
        if self.match == "prefix":
            return answer.startswith(expected)
        if self.match == "contains":
            return expected in answer
        return re.search(self.expected, answer) is not None


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    version: int
    examples: tuple[SuiteExample, ...]
    rows: int  # rows in the table at this version, before the size bound

    def ref(self) -> str:
        """``name@version``: what an evaluation records about the suite it used."""
        return f"{self.name}@{self.version}"


def suite_names(evals_dir: Path) -> list[str]:
    """Suites that have a table under ``evals_dir`` (a directory with a ``_delta_log``)."""
    if not evals_dir.is_dir():
        return []
    return sorted(p.name for p in evals_dir.iterdir() if (p / "_delta_log").is_dir())


def load_suite(path: Path, version: int | None, max_examples: int) -> Suite:
    """The suite table at ``path`` at ``version`` (latest when ``None``), bounded."""
    try:
        table = DeltaTable(str(path), version=version)
    except Exception as exc:  # deltalake raises several unrelated types for a missing table
        raise SuiteDataError(
            f"cannot open eval suite table {str(path)!r} at version {version!r}: {exc}"
        ) from exc
    rows = table.to_pyarrow_table(columns=["example_id", "prompt", "expected", "match"]).to_pylist()
    rows.sort(key=lambda r: r["example_id"])
    name = Path(path).name
    examples = tuple(
        SuiteExample(name, r["example_id"], r["prompt"], r["expected"], r["match"])
        for r in rows[:max_examples]
    )
    return Suite(name, str(path), table.version(), examples, len(rows))


def load_suites(
    evals_dir: Path, max_examples: int, pinned: dict[str, int] | None = None
) -> tuple[Suite, ...]:
    """Every suite under ``evals_dir`` (at its ``pinned`` version if given, else latest)."""
    pinned = pinned or {}
    return tuple(
        load_suite(evals_dir / name, pinned.get(name), max_examples)
        for name in suite_names(evals_dir)
    )


def all_examples(suites: Sequence[Suite]) -> tuple[SuiteExample, ...]:
    return tuple(example for suite in suites for example in suite.examples)
