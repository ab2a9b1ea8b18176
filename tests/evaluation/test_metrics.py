"""Contract: metrics are deterministic, do not depend on batch grouping, refuse non-safetensors
artifacts; perplexity is defined for any text (with per-text scores), task accuracy only when
there are suite examples, each matched by its row's rule."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from evaluation.heldout import HeldoutSample, load_heldout
from evaluation.metrics import MetricsConfig, ModelLoadError, evaluate_model, load_model
from evaluation.suites import SuiteExample


def test_deterministic_and_independent_of_batching(trained_model, corpus, suite_from):
    sample = load_heldout(corpus, 0, max_examples=60)
    tasks = suite_from(60).examples
    a = evaluate_model(trained_model, sample, MetricsConfig(batch_size=32), tasks)
    b = evaluate_model(trained_model, sample, MetricsConfig(batch_size=32), tasks)
    c = evaluate_model(trained_model, sample, MetricsConfig(batch_size=1), tasks)
    assert a == dataclasses.replace(b, seconds=a.seconds)
    assert c.task_correct == a.task_correct
    assert c.perplexity == pytest.approx(a.perplexity, rel=1e-5)
    assert c.text_nll == pytest.approx(a.text_nll, rel=1e-4)
    assert a.tasks == 60 and a.tokens > 60 and len(a.text_nll) == len(a.text_tokens) == 60
    assert sum(a.text_tokens) == a.tokens


def test_trained_model_answers_some_tasks_exactly(trained_model, corpus, suite_from):
    sample = load_heldout(corpus, 0, max_examples=100)
    m = evaluate_model(trained_model, sample, MetricsConfig(), suite_from(100).examples)
    assert 0.05 < m.exact_match <= 1.0 and m.suite_accuracy == {"demo": m.exact_match}
    assert 1.0 < m.perplexity < 50.0


def test_any_text_gets_a_perplexity_and_no_task_metric(trained_model, tmp_path):
    prose = [
        "The river ran quietly past the old mill, where nobody had worked for years.",
        "In the morning the baker opened the shutters and set out bread on the sill.",
    ] * 15
    sample = HeldoutSample("prose", 0, tuple(prose), (), len(prose))
    m = evaluate_model(trained_model, sample, MetricsConfig())
    assert m.exact_match is None and m.tasks == 0 and "exact_match" not in m.as_dict()
    assert m.perplexity > 1.0 and len(m.text_nll) == 30


def test_match_kinds():
    def ex(expected: str, match: str) -> SuiteExample:
        return SuiteExample("s", "1", "Q:", expected, match)

    assert ex("42", "exact").is_correct(" 42 ") and not ex("42", "exact").is_correct("421")
    assert ex("4", "prefix").is_correct("42") and not ex("2", "prefix").is_correct("42")
    assert ex("rain", "contains").is_correct("it will rain today")
    assert ex(r"^\d+$", "regex").is_correct("123") and not ex(r"^\d+$", "regex").is_correct("1a")
    with pytest.raises(ValueError, match="match='fuzzy'"):
        ex("x", "fuzzy")


def test_refuses_directory_without_safetensors(trained_model, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(trained_model, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(pickled)


def test_unreadable_config_is_a_load_error(trained_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(broken)
