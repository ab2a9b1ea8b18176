"""Contract: the gate passes a trained model against no champion and against an equal one, and
fails an untrained model, a model with corrupted weights, and a clearly worse challenger; it
decides on the task suites when there are any and on held-out perplexity otherwise, says which
(``basis``), and records the paired test's effect, bounds and sample size; too small a sample
is inconclusive."""

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


def metrics(correct: list[int] | None, nll_per_token: float, n_texts: int = 100) -> ModelMetrics:
    tokens = (20,) * n_texts
    return ModelMetrics(
        perplexity=float(torch.tensor(nll_per_token).exp()),
        exact_match=None if correct is None else sum(correct) / len(correct),
        tasks=0 if correct is None else len(correct),
        tokens=sum(tokens),
        seconds=0.1,
        vocab_size=512,
        text_nll=tuple(nll_per_token * t for t in tokens),
        text_tokens=tokens,
        task_correct=() if correct is None else tuple(correct),
    )


def test_basis_is_the_suites_when_there_are_any_and_perplexity_otherwise():
    half = [1, 0] * 50
    with_suites = decide(metrics(half, 1.5), metrics(half, 1.5))
    assert with_suites.basis == "task_suites" and with_suites.passed
    assert with_suites.comparison.metric == "exact_match" and with_suites.comparison.n == 100
    assert with_suites.perplexity_test is not None  # reported, not deciding
    plain = decide(metrics(None, 1.5), metrics(None, 1.5))
    assert plain.basis == "perplexity" and plain.passed
    assert plain.comparison.metric == "log perplexity"
    assert any("decides on held-out perplexity" in r for r in plain.reasons)


def test_worse_challenger_fails_with_its_evidence():
    worse = decide(metrics([0] * 100, 1.5), metrics([1] * 100, 1.5))
    assert worse.verdict == "failed" and not worse.passed
    assert "exact_match: loss +1.0000" in worse.evidence()
    ppl_worse = decide(metrics(None, 2.0), metrics(None, 1.5))
    assert ppl_worse.verdict == "failed" and "log perplexity" in ppl_worse.evidence()
    # perplexity alone does not decide when there are suites
    assert decide(metrics([1] * 100, 2.0), metrics([1] * 100, 1.5)).passed


def test_small_sample_is_inconclusive_and_policy_is_recorded():
    cfg = GateConfig(min_examples=50, inconclusive_policy="require_force")
    small = decide(metrics([1] * 10, 1.5), metrics([1] * 10, 1.5), cfg)
    assert small.verdict == "inconclusive" and not small.passed
    assert small.failures and small.failures[0].startswith("INCONCLUSIVE")
    assert small.as_dict()["config"]["inconclusive_policy"] == "require_force"


def test_floors_apply_without_champion():
    assert decide(metrics([1] * 100, 1.5), None).passed
    floors = decide(metrics([0] * 100, 7.0), None)  # ppl e^7 = 1097 > 512 / 2; accuracy 0
    assert floors.verdict == "failed" and len(floors.failures) == 2
    assert not decide(metrics(None, float("nan")), None).passed
    assert decide(metrics(None, 5.0), None).passed  # ppl 148 < 256: learned something
    assert not decide(metrics(None, 5.0), None, GateConfig(max_perplexity=100.0)).passed


@pytest.mark.parametrize(
    "field",
    [
        {"min_exact_match": 1.5},
        {"max_perplexity": 0.5},
        {"exact_match_tolerance": -0.1},
        {"confidence": 1.5},
        {"inconclusive_policy": "promote_anyway"},
    ],
)
def test_config_rejects_nonsense(field):
    with pytest.raises(ValueError, match=next(iter(field))):
        GateConfig(**field)


def test_untrained_model_fails(untrained_model, corpus, suite_from):
    report = evaluate(untrained_model, corpus, 0, CFG, suites=(suite_from(100),))
    assert not report.decision.passed
    assert report.challenger.exact_match == 0.0
    assert report.challenger.perplexity > report.challenger.vocab_size / 2
    plain = evaluate(untrained_model, corpus, 0, CFG)  # no suite: perplexity alone
    assert plain.decision.basis == "perplexity" and not plain.decision.passed


def test_corrupted_weights_fail(trained_model, corpus, tmp_path, suite_from):
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    weights = load_file(broken / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    corrupted = {k: torch.randn(v.shape, generator=generator) * 0.5 for k, v in weights.items()}
    save_file(corrupted, broken / "model.safetensors", metadata={"format": "pt"})
    report = evaluate(broken, corpus, 0, CFG, suites=(suite_from(100),))
    assert not report.decision.passed, report.markdown()


def test_trained_model_passes_alone_and_against_equal_champion(trained_model, corpus, suite_from):
    suites = (suite_from(100),)
    alone = evaluate(trained_model, corpus, 0, CFG, suites=suites)
    assert alone.decision.passed, alone.markdown()
    assert alone.champion is None and "no champion" in alone.decision.reasons[-1]
    vs_equal = evaluate(
        trained_model,
        corpus,
        0,
        CFG,
        champion_dir=trained_model,
        champion_version="1",
        suites=suites,
    )
    assert vs_equal.decision.passed, vs_equal.markdown()
    assert vs_equal.champion.exact_match == vs_equal.challenger.exact_match
    assert vs_equal.champion.perplexity == vs_equal.challenger.perplexity
    assert vs_equal.suites == ("demo@0",) and vs_equal.examples == 100


def test_worse_challenger_fails_against_better_champion(untrained_model, trained_model, corpus):
    # Floors off, so only the comparison with the champion can fail; no suite: perplexity.
    cfg = EvaluationConfig(
        max_examples=100, gate=GateConfig(min_exact_match=0.0, max_perplexity=1e9)
    )
    report = evaluate(
        untrained_model, corpus, 0, cfg, champion_dir=trained_model, champion_version="4"
    )
    assert report.decision.verdict == "failed" and report.decision.basis == "perplexity"
    assert all("champion" in failure for failure in report.decision.failures)
    assert report.decision.comparison.low > report.decision.comparison.margin
    assert "champion (v4)" in report.markdown()


def test_report_round_trips_through_json(trained_model, corpus, tmp_path, suite_from):
    report = evaluate(
        trained_model,
        corpus,
        0,
        CFG,
        champion_dir=trained_model,
        champion_version="2",
        suites=(suite_from(50),),
    )
    path = report.write(tmp_path / "eval" / "report.json")
    assert EvaluationReport.from_json(path.read_text()) == report
    assert report.metrics()["gate_passed"] == 1.0
    assert report.metrics()["champion_exact_match"] == report.champion.exact_match
    assert report.metrics()["eval_exact_match.demo"] == report.challenger.exact_match
