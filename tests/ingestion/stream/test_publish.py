"""Contract of ``python -m ingestion publish FILE``: every record of a JSONL, CSV or Parquet
file becomes one message on the stream (JSONL lines byte for byte, blank lines skipped; CSV
and Parquet rows as JSON objects of text and the optional fields); publishing the same file
again within the duplicate window stores nothing twice; a file of another kind is refused
with a clear error and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stream_broker import _with_js, delete_streams, publish, run, unique_config  # noqa: E402

ROWS = [
    {"text": "first", "id": "1", "source": "s"},
    {"text": "second, with a comma", "id": "2", "source": None},
]


def _stream_bodies(config) -> list[dict]:
    async def action(js):
        info = await js.stream_info(config.stream)
        return [
            json.loads((await js.get_msg(config.stream, seq)).data)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]

    return run(_with_js(config, action))


@pytest.fixture
def config():
    config = unique_config()
    yield config
    delete_streams(config)


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_each_record_is_one_message(tmp_path: Path, config, kind: str) -> None:
    path = tmp_path / f"records.{kind}"
    if kind == "jsonl":
        path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    elif kind == "csv":
        pacsv.write_csv(pa.Table.from_pylist(ROWS), path)
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    result = publish(config, path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["published"] == 2 and report["duplicates"] == 0
    bodies = _stream_bodies(config)
    assert [b["text"] for b in bodies] == ["first", "second, with a comma"]
    assert bodies[0]["id"] == "1" and bodies[0]["source"] == "s"

    again = json.loads(publish(config, path).stdout)
    assert again["duplicates"] == 2 and len(_stream_bodies(config)) == 2


def test_other_files_are_refused(tmp_path: Path, config) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    result = publish(config, path)
    assert result.returncode == 2
    assert "'.txt' is not one of .jsonl, .csv, .parquet" in result.stderr
    missing = publish(config, tmp_path / "absent.jsonl")
    assert missing.returncode == 2 and "is not a file" in missing.stderr
