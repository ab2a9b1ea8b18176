"""Fixtures for evaluation tests: a sample corpus table and reference models built offline."""

from __future__ import annotations

import os
from pathlib import Path

import deltalake
import pyarrow as pa
import pytest

from evaluation.reference_model import ReferenceModelConfig, build_reference_model
from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_corpus(path: Path, count: int, seed: int) -> Path:
    texts = [normalise_text(r["text"]) for r in generate_records(count, seed=seed)]
    table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
    deltalake.write_deltalake(str(path), table, mode="append")
    return path


@pytest.fixture(scope="session")
def corpus_writer():
    """``write(path, count, seed)`` appends sample records to a corpus Delta table."""
    return write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A corpus Delta table (version 0) of 6000 sample records, about 300 held out."""
    return write_corpus(tmp_path_factory.getbasetemp() / "corpus-eval", 6000, seed=7)


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    return build_reference_model(tmp_path_factory.getbasetemp() / "reference-untrained")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    return build_reference_model(
        tmp_path_factory.getbasetemp() / "reference-trained", ReferenceModelConfig(train_steps=300)
    )


def suite_of(corpus: Path, max_examples: int, name: str = "demo"):
    """The corpus's held-out sample tasks as an in-memory suite (exact match)."""
    from evaluation.heldout import load_heldout
    from evaluation.suites import Suite, SuiteExample

    tasks = load_heldout(corpus, 0, max_examples).tasks
    examples = tuple(
        SuiteExample(name, f"{i:05d}", task.prompt, task.answer) for i, task in enumerate(tasks)
    )
    return Suite(name, str(corpus), 0, examples, len(examples))


@pytest.fixture(scope="session")
def suite_from(corpus):
    """``suite_from(max_examples)``: held-out tasks of ``corpus`` as a task suite."""
    return lambda max_examples: suite_of(corpus, max_examples)
