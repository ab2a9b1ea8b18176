"""Contract: metrics are deterministic, do not depend on batch grouping, refuse non-safetensors
artifacts, and exact match reads the continuation only up to end-of-sequence."""

from __future__ import annotations

import json
import shutil

import pytest

from evaluation.heldout import load_heldout
from evaluation.metrics import MetricsConfig, ModelLoadError, evaluate_model, load_model


def test_deterministic_and_independent_of_batching(trained_model, corpus):
    sample = load_heldout(corpus, 0, max_examples=60)
    a = evaluate_model(trained_model, sample, MetricsConfig(batch_size=32))
    b = evaluate_model(trained_model, sample, MetricsConfig(batch_size=32))
    c = evaluate_model(trained_model, sample, MetricsConfig(batch_size=1))
    assert (a.perplexity, a.exact_match) == (b.perplexity, b.exact_match)
    assert c.exact_match == a.exact_match
    assert c.perplexity == pytest.approx(a.perplexity, rel=1e-5)
    assert a.tasks == 60 and a.tokens > 60


def test_trained_model_answers_some_tasks_exactly(trained_model, corpus):
    sample = load_heldout(corpus, 0, max_examples=100)
    m = evaluate_model(trained_model, sample, MetricsConfig())
    assert 0.05 < m.exact_match <= 1.0
    assert 1.0 < m.perplexity < 50.0


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
