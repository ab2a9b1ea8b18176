"""Contract: the code location loads, and its graph of assets, checks, jobs, sensors and
schedules is exactly the reviewed snapshot, so an accidental change to the graph fails CI.

After an intended change, regenerate the snapshot with
``MLOPS_UPDATE_SNAPSHOT=1 pytest tests/orchestration/test_definitions.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from orchestration.definitions import defs

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")
ROOT = Path(__file__).resolve().parents[2]


def graph_snapshot(definitions: dg.Definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "owners": sorted(node.owners),
            "described": bool(node.description),
        }
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: k.to_user_string()):
        spec = graph.get_check_spec(check_key)
        checks[check_key.to_user_string()] = {
            "blocking": spec.blocking,
            "described": bool(spec.description),
        }
    jobs = {}
    for job in sorted(definitions.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue
        selected = job.asset_layer.selected_asset_keys if job.asset_layer else set()
        jobs[job.name] = sorted(k.to_user_string() for k in selected)
    sensors = {
        s.name: sorted(
            t.resolvable_to_job
            if isinstance(t.resolvable_to_job, str)
            else t.resolvable_to_job.name
            for t in s.targets
        )
        for s in (definitions.resolve_sensor_def(s.name) for s in definitions.sensors or [])
    }
    schedules = {
        s.name: {"cron": s.cron_schedule, "job": s.job_name}
        for s in (definitions.resolve_schedule_def(s.name) for s in definitions.schedules or [])
    }
    return {
        "assets": assets,
        "checks": checks,
        "jobs": jobs,
        "sensors": sensors,
        "schedules": schedules,
    }


def test_graph_matches_snapshot() -> None:
    current = graph_snapshot(defs)
    if os.environ.get("MLOPS_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, (
        "The Dagster graph changed. If intended, regenerate with MLOPS_UPDATE_SNAPSHOT=1 and "
        "review the diff of tests/orchestration/definitions_snapshot.json."
    )


def test_every_asset_is_described_and_owned() -> None:
    snapshot = graph_snapshot(defs)
    for name, asset in snapshot["assets"].items():
        assert asset["described"], f"asset {name} has no description"
        assert asset["owners"], f"asset {name} has no owner"
        assert asset["group"] and asset["group"] != "default", f"asset {name} has no group"
    for name, check in snapshot["checks"].items():
        assert check["described"], f"check {name} has no description"


def test_descriptions_are_markdown_without_rst_literals() -> None:
    """The Dagster UI renders descriptions as Markdown, where ``x`` shows its backticks."""
    described = {
        **{
            f"asset {k.to_user_string()}": a.descriptions_by_key.get(k)
            for a in defs.resolve_asset_graph().assets_defs
            for k in a.keys
        },
        **{f"job {j.name}": j.description for j in defs.resolve_all_job_defs()},
        **{f"sensor {s.name}": s.description for s in defs.sensors or []},
        **{f"schedule {s.name}": s.description for s in defs.schedules or []},
    }
    assert any(described.values())
    offending = sorted(name for name, text in described.items() if text and "``" in text)
    assert not offending, f"reStructuredText double backticks in: {offending}"


def test_dagster_cli_validates_workspace(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "MLOPS_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
