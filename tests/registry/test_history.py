"""Contract: every move of ``champion``, ``challenger`` and ``previous-champion`` is in the
alias history (time, from, to, who, kind, reason, evidence) across registration, promotion,
forced promotion and rollback; ``python -m registry history`` prints it and answers which
version was champion at a given time; a move killed between its alias writes leaves rows
that the next operation settles to what really happened, never a move without its record.

Against a real ``mlflow server`` (SQLite and PostgreSQL backend stores); the history lives
in the database of the promotion lock."""

from __future__ import annotations

import json

import pytest

from registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    ForcedPromotion,
    lineage_of,
    promote,
    register_version,
    rollback,
)
from registry.history import parse_time
from registry.promotion import alias_history

pytestmark = pytest.mark.slow


def register(client, model_dir, report, actor="dagster:train-run"):
    lineage = lineage_of(model_dir, "train-run", None, 0)
    return register_version(client, model_dir, report, lineage, actor=actor).version


def moves(entries):
    return [(e.alias, e.from_version, e.to_version, e.kind, e.status) for e in entries]


def test_history_across_promote_forced_promotion_and_rollback(client, variant, report_for, cli):
    v1 = register(client, variant(1), report_for(variant(1)))
    promote(client, v1, "dagster:run-1")
    v2 = register(client, variant(2), report_for(variant(2), against=v1))
    promote(client, v2, "dagster:run-2", kind="canary-promotion", evidence={"canary": {"steps": 3}})
    v3 = register(client, variant(3), report_for(variant(3), against=v2, floors=True))
    assert client.version_tags(v3)["gate.passed"] == "false"  # no challenger move for it
    promote(client, v3, "cli:alice", force=ForcedPromotion("hotfix for the demo"))
    rollback(client, "answers regressed", "cli:bob", evidence={"canary": {"decision": "x"}})
    assert client.aliases() == {CHALLENGER: v2, CHAMPION: v2, PREVIOUS: v2}

    entries = alias_history(client).entries()
    assert moves(entries) == [
        (CHALLENGER, None, v1, "registration", "done"),
        (CHAMPION, None, v1, "promotion", "done"),
        (CHALLENGER, v1, v2, "registration", "done"),
        (PREVIOUS, None, v1, "canary-promotion", "done"),  # one move, two aliases
        (CHAMPION, v1, v2, "canary-promotion", "done"),
        (PREVIOUS, v1, v2, "forced-promotion", "done"),
        (CHAMPION, v2, v3, "forced-promotion", "done"),
        (CHAMPION, v3, v2, "rollback", "done"),
    ]
    by_kind = {e.kind: e for e in entries if e.alias == CHAMPION}
    assert by_kind["promotion"].actor == "dagster:run-1"
    assert by_kind["promotion"].evidence["gate"]["gate.passed"] == "true"
    assert by_kind["canary-promotion"].evidence["canary"] == {"steps": 3}
    assert by_kind["canary-promotion"].evidence["gate"]["gate.champion_version"] == v1
    assert by_kind["forced-promotion"].reason == "hotfix for the demo"
    assert by_kind["forced-promotion"].evidence["gate"]["gate.passed"] == "false"
    assert by_kind["rollback"].actor == "cli:bob"
    assert by_kind["rollback"].reason == "answers regressed"
    assert entries[0].actor == "dagster:train-run"
    assert entries[0].evidence["gate"]["gate.passed"] == "true"
    times = [parse_time(e.at) for e in entries]
    assert times == sorted(times)

    printed = cli("history", "--json")
    assert printed.returncode == 0, printed.stderr
    assert [e["to_version"] for e in json.loads(printed.stdout)] == [e.to_version for e in entries]
    text = cli("history", "--alias", "champion")
    assert text.returncode == 0 and len(text.stdout.strip().splitlines()) == 4
    assert "hotfix for the demo" in text.stdout and "by cli:alice" in text.stdout

    def champion_at(when: str) -> str | None:
        answer = cli("history", "--at", when, "--json")
        assert answer.returncode == 0, answer.stderr
        return json.loads(answer.stdout)["version"]

    champion_moves = [e for e in entries if e.alias == CHAMPION]
    assert champion_at("2000-01-01T00:00:00Z") is None
    for move in champion_moves:
        assert champion_at(move.at) == move.to_version
    assert champion_at("2999-01-01T00:00:00+00:00") == v2
    bad = cli("history", "--at", "yesterday")
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr


def test_a_move_killed_halfway_is_settled_to_what_happened(client, variant, report_for, cli):
    v1 = register(client, variant(1), report_for(variant(1)))
    promote(client, v1, "test")
    v2 = register(client, variant(2), report_for(variant(2), against=v1))
    history = alias_history(client)
    before = len(history.entries())

    crashed = cli(
        "promote", "--version", v2, env={"MLOPS_REGISTRY_FAULT": "promote:after-previous-champion"}
    )
    assert crashed.returncode == -9, crashed.stderr
    assert [e.status for e in history.entries()[before:]] == ["pending", "pending"]
    shown = cli("history", "--json")  # settles under the lock before answering
    assert shown.returncode == 0, shown.stderr
    settled = json.loads(shown.stdout)[before:]
    assert [(e["alias"], e["status"]) for e in settled] == [
        (PREVIOUS, "done"),
        (CHAMPION, "aborted"),
    ]
    assert cli("history", "--at", "2999-01-01T00:00:00Z", "--json").stdout.count(f'"{v1}"') >= 1

    assert cli("recover").returncode == 0
    last = history.entries()[-1]
    assert (last.alias, last.from_version, last.to_version, last.kind, last.status) == (
        CHAMPION,
        v1,
        v2,
        "recover",
        "done",
    )

    v3 = register(client, variant(3), report_for(variant(3), against=v2))
    crashed = cli(
        "promote", "--version", v3, env={"MLOPS_REGISTRY_FAULT": "promote:after-champion"}
    )
    assert crashed.returncode == -9
    assert cli("promote", "--version", v3).returncode == 0  # the retry settles the record
    assert moves(history.entries()[-2:]) == [
        (PREVIOUS, v1, v2, "promotion", "done"),
        (CHAMPION, v2, v3, "promotion", "done"),
    ]

    crashed = cli(
        "rollback", "--reason", "bad", env={"MLOPS_REGISTRY_FAULT": "rollback:after-tags"}
    )
    assert crashed.returncode == -9
    assert cli("rollback", "--reason", "bad").returncode == 0
    assert moves(history.entries()[-2:]) == [
        (CHAMPION, v3, v2, "rollback", "aborted"),
        (CHAMPION, v3, v2, "rollback", "done"),
    ]
    assert client.aliases()[CHAMPION] == v2
