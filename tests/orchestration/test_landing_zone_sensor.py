"""Contract: `landing_zone_sensor` requests one `ingest` run per new landing file, keyed by
the file's content fingerprint (so a renamed copy maps to the same key and Dagster never
launches it twice), and requests nothing for files already ingested.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from ingestion.config import IngestConfig
from ingestion.pipeline import ingest
from orchestration.definitions import defs
from orchestration.resources import MlopsHome


def _evaluate(instance: dg.DagsterInstance, home: Path):
    sensor = defs.resolve_sensor_def("landing_zone_sensor")
    context = dg.build_sensor_context(
        instance=instance, resources={"mlops": MlopsHome(home=str(home))}
    )
    result = sensor.evaluate_tick(context)
    return result.run_requests or [], result.skip_message


def test_one_run_request_per_new_file_keyed_by_fingerprint(tmp_path: Path) -> None:
    home = tmp_path / "mlops"
    landing = home / "landing"
    (landing / "batch").mkdir(parents=True)
    (landing / "a.jsonl").write_text(json.dumps({"text": "first"}) + "\n")
    (landing / "batch" / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n")
    with dg.instance_for_test() as instance:
        requests, _ = _evaluate(instance, home)
        assert sorted(
            r.run_config["ops"]["ingest_landing_files"]["config"]["files"][0] for r in requests
        ) == [
            "a.jsonl",
            "batch/b.jsonl",
        ]
        assert len({r.run_key for r in requests}) == 2
        assert all(r.job_name in (None, "ingest") for r in requests)

        # A renamed copy has the same content, hence the same run key: no second run.
        (landing / "a-copy.jsonl").write_bytes((landing / "a.jsonl").read_bytes())
        again, _ = _evaluate(instance, home)
        assert len(again) == 2
        assert {r.run_key for r in again} == {r.run_key for r in requests}

        ingest(IngestConfig(landing_dir=landing, lake_dir=home / "lake"))
        after, skip = _evaluate(instance, home)
        assert after == []
        assert "no new files" in skip


def test_missing_landing_directory_is_a_skip_not_an_error(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        requests, skip = _evaluate(instance, tmp_path / "nowhere")
    assert requests == []
    assert "does not exist" in skip
