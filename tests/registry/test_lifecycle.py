"""Contract: against a real ``mlflow server`` (SQLite and PostgreSQL backend stores) a model goes
register -> challenger -> champion -> rollback with lineage tags on every version; promotions
are gated, idempotent, race-safe and crash-recoverable; rollback is safe to run twice; the
champion loads back offline through ``models:/NAME@champion`` and generates."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace

import mlflow
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    ForcedPromotion,
    GateNotPassedError,
    RegistryClient,
    RegistryUnavailableError,
    download_model_dir,
    lineage_of,
    promote,
    register_version,
    rollback,
)
from registry.promotion import PENDING_TAG, pending_promotion

pytestmark = pytest.mark.slow


def register(client, model_dir, report, run_id="train-run"):
    return register_version(client, model_dir, report, lineage_of(model_dir, run_id, None, 0))


def test_registration_tags_lineage_and_sets_challenger(client, variant, report_for, corpus):
    model = variant(1)
    report = report_for(model)
    lineage = lineage_of(model, "dagster-run-42", str(corpus), 0)
    environment = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    registered = register_version(client, model, report, lineage)
    assert registered.created and registered.gate_passed
    # Processes started after a registration (torchrun, engines) must not inherit its store.
    assert {k: os.environ.get(k) for k in environment} == environment
    tags = client.version_tags(registered.version)
    assert tags["lineage.data_version"] == "0"
    assert tags["lineage.data_path"] == str(corpus)
    assert tags["lineage.training_run_id"] == "dagster-run-42"
    assert tags["lineage.model_sha256"] == lineage.model_sha256
    assert tags["lineage.code_version"] != ""
    assert tags["gate.passed"] == "true" and tags["gate.champion_version"] == "none"
    # no task suite in this corpus: the gate decided on perplexity, and says so
    assert tags["gate.basis"] == "perplexity"
    assert float(tags["eval.perplexity"]) == pytest.approx(report.challenger.perplexity, rel=1e-5)
    assert client.aliases() == {CHALLENGER: registered.version}
    run = client.mlflow.get_run(registered.run_id)
    assert run.data.metrics["eval_perplexity"] == pytest.approx(report.challenger.perplexity)
    assert run.data.tags["lineage.training_run_id"] == "dagster-run-42"
    again = register_version(client, model, report, lineage)
    assert (again.version, again.created) == (registered.version, False)


def test_failed_gate_gets_no_alias_and_is_promoted_only_by_force(
    client, untrained_model, report_for
):
    report = report_for(untrained_model, floors=True)
    assert not report.decision.passed
    registered = register(client, untrained_model, report)
    assert not registered.gate_passed and client.aliases() == {}
    with pytest.raises(GateNotPassedError, match="did not pass"):
        promote(client, registered.version, "test")
    assert client.aliases() == {}
    with pytest.raises(ValueError, match="reason"):
        ForcedPromotion("  ")
    forced = promote(
        client, registered.version, "ops", force=ForcedPromotion("incident 7: known gap")
    )
    assert forced.changed and client.aliases()[CHAMPION] == registered.version
    tags = client.version_tags(registered.version)
    assert tags["promotion.forced"] == "true"
    assert tags["promotion.force_reason"] == "incident 7: known gap"


def test_promote_retry_rollback_twice_and_champion_loads(
    client, variant, report_for, mlflow_server
):
    v1 = register(client, variant(1), report_for(variant(1))).version
    first = promote(client, v1, "test")
    assert first.changed and client.aliases() == {CHALLENGER: v1, CHAMPION: v1}
    assert first.message == f"v{v1} promoted as the first champion"
    assert not promote(client, v1, "test").changed  # retried promotion: no-op

    v2 = register(client, variant(2), report_for(variant(2), against=v1)).version
    assert client.aliases()[CHALLENGER] == v2
    second = promote(client, v2, "dagster:promote")
    assert client.aliases() == {CHALLENGER: v2, CHAMPION: v2, PREVIOUS: v1}
    assert second.message == f"v{v2} promoted over v{v1}"
    assert client.version_tags(v2)["promotion.promoted_by"] == "dagster:promote"
    assert PENDING_TAG not in client.model_tags()

    back = rollback(client, "canary error rate 4%", "test")
    assert back.changed and client.aliases()[CHAMPION] == v1
    assert client.version_tags(v2)["rollback.reason"] == "canary error rate 4%"
    assert json.loads(client.model_tags()["rollback.last"])["to"] == v1
    again = rollback(client, "canary error rate 4%", "test")
    assert not again.changed and client.aliases() == {CHALLENGER: v2, CHAMPION: v1, PREVIOUS: v1}
    with pytest.raises(GateNotPassedError, match="rolled back"):
        promote(client, v2, "test", expected_champion=v1)

    mlflow.set_tracking_uri(mlflow_server.url)
    model = mlflow.pyfunc.load_model(f"models:/{client.config.model_name}@champion")
    prompt = "Q: sort 3 1 2 A:"
    [generated] = model.predict([prompt], params={"max_new_tokens": 8})
    local = download_model_dir(client, CHAMPION, mlflow_server.artifacts.parent / "dl")
    tok = AutoTokenizer.from_pretrained(local)
    hf = AutoModelForCausalLM.from_pretrained(local)
    ids = tok(prompt, return_tensors="pt")
    out = hf.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated == tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_crash_between_alias_moves_is_consistent_and_recoverable(client, variant, report_for, cli):
    v1 = register(client, variant(1), report_for(variant(1))).version
    promote(client, v1, "test")
    v2 = register(client, variant(2), report_for(variant(2), against=v1)).version

    crashed = cli(
        "promote", "--version", v2, env={"MLOPS_REGISTRY_FAULT": "promote:after-previous-champion"}
    )
    assert crashed.returncode == -9, crashed.stderr
    assert client.aliases() == {CHALLENGER: v2, CHAMPION: v1, PREVIOUS: v1}  # still serving v1
    assert pending_promotion(client)["to"] == v2

    recovered = cli("recover")
    assert recovered.returncode == 0, recovered.stderr
    assert client.aliases() == {CHALLENGER: v2, CHAMPION: v2, PREVIOUS: v1}
    assert pending_promotion(client) is None

    v3 = register(client, variant(3), report_for(variant(3), against=v2)).version
    crashed = cli(
        "promote", "--version", v3, env={"MLOPS_REGISTRY_FAULT": "promote:after-champion"}
    )
    assert crashed.returncode == -9
    assert client.aliases()[CHAMPION] == v3 and pending_promotion(client)["to"] == v3
    retried = cli("promote", "--version", v3)
    assert retried.returncode == 0 and "already champion" in retried.stdout
    assert pending_promotion(client) is None
    assert client.aliases() == {CHALLENGER: v3, CHAMPION: v3, PREVIOUS: v2}


def test_racing_promotions_one_wins_other_fails_clearly(client, variant, report_for, cli):
    v1 = register(client, variant(1), report_for(variant(1))).version
    promote(client, v1, "test")
    v2 = register(client, variant(2), report_for(variant(2), against=v1)).version
    v3 = register(client, variant(3), report_for(variant(3), against=v1)).version
    racers = {v: cli("promote", "--version", v, background=True) for v in (v2, v3)}
    results = {v: (p.wait(timeout=120), p.communicate()) for v, p in racers.items()}
    winners = [v for v, (rc, _) in results.items() if rc == 0]
    losers = [v for v, (rc, _) in results.items() if rc != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    rc, (_, stderr) = results[losers[0]]
    assert rc == 2 and "re-evaluate" in stderr
    aliases = client.aliases()
    assert aliases[CHAMPION] == winners[0] and aliases[PREVIOUS] == v1


def test_unreachable_mlflow_bounded_retries_and_nothing_changes(
    client, variant, report_for, mlflow_server
):
    model = variant(1)
    v1 = register(client, model, report_for(model)).version
    before = client.aliases()
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = replace(client.config, tracking_uri=dead, attempts=3, backoff_s=0.2)
    offline = RegistryClient(cfg)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=dead) as caught:
        promote(offline, v1, "test")
    assert caught.value.attempts == 3
    assert time.monotonic() - started < 15  # 0.2 + 0.4 s of backoff, fast refusals
    with pytest.raises(RegistryUnavailableError, match=dead):
        register(offline, variant(2), report_for(model))
    assert client.aliases() == before
    assert len(client.mlflow.search_model_versions(f"name = '{cfg.model_name}'")) == 1
