"""Contract: the rollout's probes come from the held-out split of the data version the
challenger was evaluated on, on any corpus: held-out texts always (cut to fit the model's
context), held-out ``Q: … A:`` tasks only where the corpus has them; and the timeline table
shows each step's canary requests split into user and probe."""

from __future__ import annotations

import deltalake
import pyarrow as pa
import pytest

from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records
from orchestration.defs.serving.rollout import ProbeDataError, load_probes, timeline_markdown
from serving.canary import CanaryResult, StepRecord
from serving.canary_evidence import Evidence


def write_corpus(path, texts: list[str]) -> str:
    texts = [normalise_text(t) for t in texts]
    table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
    deltalake.write_deltalake(str(path), table)
    return str(path)


def test_plain_text_corpus_gives_text_probes_only(tmp_path):
    prose = [f"Entry {i}: the tide came in slowly over the flats, " * 8 for i in range(300)]
    corpus = write_corpus(tmp_path / "corpus", prose)
    probes = load_probes({"lineage.data_path": corpus, "eval.data_version": "0"}, tmp_path, 10, 120)
    assert probes.tasks == () and len(probes.texts) == 10
    assert all(len(t) <= 120 for t in probes.texts)
    assert probes.source == f"held-out split of {corpus} v0"


def test_task_corpus_gives_tasks_and_texts(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", [r["text"] for r in generate_records(400, seed=2)])
    probes = load_probes({}, tmp_path / "corpus", 8)  # no lineage tags: the fallback corpus
    assert len(probes.tasks) == 8 and len(probes.texts) == 8
    assert all(p.prompt.endswith("A:") for p in probes.tasks)
    assert corpus in probes.source


def test_no_readable_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ProbeDataError, match="probe_count: 0"):
        load_probes({}, tmp_path / "missing", 5)
    assert len(load_probes({}, tmp_path / "missing", 0)) == 0


def test_timeline_shows_requests_by_source_and_the_verdict():
    step = StepRecord(50.0, 0.0, passed=False, verdict="inconclusive", reason="3 canary requests")
    step.evidence = Evidence(1, 0, 2, 0, min_requests=20).to_dict()
    table = timeline_markdown(CanaryResult("inconclusive", "x", "c", "s", [step]))
    assert "| 50% | 3 (1 + 2) |" in table and "INCONCLUSIVE: 3 canary requests" in table
