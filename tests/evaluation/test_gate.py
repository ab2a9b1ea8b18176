"""Contract: the gate passes a trained model against no champion and against an equal one, and
fails an untrained model, a model with corrupted weights, and a regression beyond tolerance;
every decision carries one reason per rule."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluation import (
    EvaluationConfig,
    EvaluationReport,
    GateConfig,
    ModelMetrics,
    decide,
    evaluate,
)

CFG = EvaluationConfig(max_examples=100)


def metrics(exact_match: float, perplexity: float) -> ModelMetrics:
    return ModelMetrics(
        perplexity=perplexity, exact_match=exact_match, tasks=100, tokens=1000, seconds=0.1
    )


def test_rules_and_tolerances():
    good = metrics(0.5, 4.0)
    assert decide(good, None).passed
    assert decide(good, metrics(0.51, 4.1)).passed  # within tolerance both ways
    regressed = decide(metrics(0.40, 4.0), metrics(0.50, 4.0))
    assert not regressed.passed and len(regressed.failures) == 1
    assert "champion 0.5000" in regressed.failures[0]
    worse_ppl = decide(metrics(0.5, 5.0), metrics(0.5, 4.0))
    assert not worse_ppl.passed and "perplexity 5.0000" in worse_ppl.failures[0]
    floors = decide(metrics(0.0, 400.0), None)
    assert not floors.passed and len(floors.failures) == 2
    assert not decide(metrics(0.5, float("nan")), None).passed


@pytest.mark.parametrize(
    "field", [{"min_exact_match": 1.5}, {"max_perplexity": 0.5}, {"exact_match_tolerance": -0.1}]
)
def test_config_rejects_nonsense(field):
    with pytest.raises(ValueError, match=next(iter(field))):
        GateConfig(**field)


def test_untrained_model_fails(untrained_model, corpus):
    report = evaluate(untrained_model, corpus, 0, CFG)
    assert not report.decision.passed
    assert report.challenger.exact_match == 0.0
    assert report.challenger.perplexity > CFG.gate.max_perplexity


def test_corrupted_weights_fail(trained_model, corpus, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    weights = load_file(broken / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    corrupted = {k: torch.randn(v.shape, generator=generator) * 0.5 for k, v in weights.items()}
    save_file(corrupted, broken / "model.safetensors", metadata={"format": "pt"})
    report = evaluate(broken, corpus, 0, CFG)
    assert not report.decision.passed, report.markdown()


def test_trained_model_passes_alone_and_against_equal_champion(trained_model, corpus):
    alone = evaluate(trained_model, corpus, 0, CFG)
    assert alone.decision.passed, alone.markdown()
    assert alone.champion is None and "no champion" in alone.decision.reasons[-1]
    vs_equal = evaluate(
        trained_model, corpus, 0, CFG, champion_dir=trained_model, champion_version="1"
    )
    assert vs_equal.decision.passed, vs_equal.markdown()
    assert vs_equal.champion.exact_match == vs_equal.challenger.exact_match
    assert vs_equal.champion.perplexity == vs_equal.challenger.perplexity


def test_worse_challenger_fails_against_better_champion(untrained_model, trained_model, corpus):
    # Floors off, so only the comparison with the champion can fail.
    cfg = EvaluationConfig(
        max_examples=100, gate=GateConfig(min_exact_match=0.0, max_perplexity=1e9)
    )
    report = evaluate(
        untrained_model, corpus, 0, cfg, champion_dir=trained_model, champion_version="4"
    )
    assert not report.decision.passed
    assert all("champion" in failure for failure in report.decision.failures)
    assert "champion (v4)" in report.markdown()


def test_report_round_trips_through_json(trained_model, corpus, tmp_path):
    report = evaluate(
        trained_model, corpus, 0, CFG, champion_dir=trained_model, champion_version="2"
    )
    path = report.write(tmp_path / "eval" / "report.json")
    assert EvaluationReport.from_json(path.read_text()) == report
    assert report.metrics()["gate_passed"] == 1.0
    assert report.metrics()["champion_exact_match"] == report.champion.exact_match
