"""Contract: bad input is refused with one clear ``error:`` line, a non-zero exit, nothing changed.

Cases: a missing corpus, an empty corpus, a corpus with no train-split records, more
processes than the data can feed, an unknown config key, and an incompatible checkpoint
(different model shape / config, caught both by the run pin and by the checkpoint
manifest itself). For the incompatible case the output directory of a finished run is
compared byte for byte before and after (logs aside, which only ever grow).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import deltalake
import pyarrow as pa
import pytest

from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records
from ingestion.split import is_train


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "logs" not in p.relative_to(root).parts
    }


def _refused(result, message: str) -> None:
    assert result.rc != 0
    assert "error: " in result.stderr and message in result.stderr, result.stderr[-3000:]


def _nothing_written(output: Path) -> None:
    assert not (output / "run.json").exists()
    assert not (output / "checkpoints").exists()
    assert not (output / "model").exists()
    assert not (output / "tokenizer").exists()


def test_missing_corpus(tmp_path, tiny_config, tr):
    out = tmp_path / "run"
    result = tr.run(tr.command(tmp_path / "no-such-table", out, tiny_config, nproc=1), out)
    _refused(result, "is not a Delta table")
    _nothing_written(out)


def test_empty_corpus(tmp_path, tiny_config, tr):
    table = tmp_path / "empty"
    schema = pa.schema([("record_id", pa.string()), ("text", pa.string())])
    deltalake.write_deltalake(str(table), schema.empty_table())
    out = tmp_path / "run"
    result = tr.run(tr.command(table, out, tiny_config, nproc=1), out)
    _refused(result, "the corpus is empty")
    _nothing_written(out)


def test_no_train_records(tmp_path, tiny_config, tr):
    texts = [normalise_text(r["text"]) for r in generate_records(2000, seed=5)]
    heldout = [t for t in texts if not is_train(record_id(t))]
    assert heldout
    table = tmp_path / "heldout-only"
    tr.write_corpus(table, heldout)
    out = tmp_path / "run"
    result = tr.run(tr.command(table, out, tiny_config, nproc=1), out)
    _refused(result, "is in the train split")
    _nothing_written(out)


def test_more_processes_than_the_data_allows(tmp_path, tiny_config, tr):
    table = tmp_path / "small"
    tr.write_corpus(table, [r["text"] for r in generate_records(12, seed=1)])
    out = tmp_path / "run"
    result = tr.run(tr.command(table, out, tiny_config, nproc=2), out)
    _refused(result, "--nproc-per-node=2")
    assert "fewer than one global batch" in result.stderr
    _nothing_written(out)


def test_unknown_config_key(tmp_path, corpus, tr):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  hidden_sise: 64\n", encoding="utf-8")
    out = tmp_path / "run"
    result = tr.run(tr.command(corpus, out, config, nproc=1), out)
    _refused(result, "unknown keys ['hidden_sise']")
    _nothing_written(out)


@pytest.mark.parametrize("drop_run_pin", [False, True], ids=["run-pin", "checkpoint-manifest"])
def test_incompatible_checkpoint_is_refused_and_nothing_changes(
    tmp_path, corpus, baseline, tr, drop_run_pin
):
    out = tmp_path / "run"
    shutil.copytree(baseline.output, out)
    if drop_run_pin:
        (out / "run.json").unlink()  # only the checkpoints' manifests are left to object
    before = _tree(out)
    config = tmp_path / "wider.json"
    wider = json.loads(json.dumps(tr.TINY))
    wider["model"]["hidden_size"] = 64
    config.write_text(json.dumps(wider), encoding="utf-8")
    result = tr.run(tr.command(corpus, out, config), out)
    _refused(result, "is incompatible with this run")
    assert "model.hidden_size (saved 32, now 64)" in result.stderr
    if drop_run_pin:
        assert "step_00000060" in result.stderr and "model shape differs" in result.stderr
    assert _tree(out) == before
