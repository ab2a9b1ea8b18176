"""Typed failures of the training program.

Each carries the offending field or path and says what to do; ``training.cli`` maps them
to one line on stderr and a non-zero exit code (2 for bad input, 3 for an incompatible
checkpoint), so operators and the Dagster asset see the same message.
"""

from __future__ import annotations


class TrainingInputError(ValueError):
    """The corpus, the flags or the data size make training impossible."""

    exit_code = 2

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r}: {problem}")


class IncompatibleCheckpointError(RuntimeError):
    """The output directory holds state from a run this run cannot continue."""

    exit_code = 3

    def __init__(self, where: str, differences: list[str]) -> None:
        self.where = where
        self.differences = differences
        super().__init__(
            f"{where} is incompatible with this run: "
            + "; ".join(differences)
            + ". Nothing was changed: use a new --output directory, or the original "
            "config, seed and step count to continue this run."
        )


def diff_mapping(saved: object, current: object, prefix: str = "") -> list[str]:
    """Name every leaf where two nested mappings differ, as ``a.b (saved X, now Y)``."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out.extend(diff_mapping(saved.get(key), current.get(key), name))
        return out
    if saved != current:
        return [f"{prefix or 'value'} (saved {saved!r}, now {current!r})"]
    return []
