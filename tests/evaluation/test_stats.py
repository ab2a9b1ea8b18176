"""Contract: the paired non-inferiority tests give the known answers on constructed per-example
scores: identical models pass, a model wrong where the other is right fails, an interval that
straddles the margin or too few examples is inconclusive, and the bounds match the normal
approximation of a known proportion."""

from __future__ import annotations

import math

import pytest

from evaluation.stats import PairedTestConfig, accuracy_loss, log_perplexity_loss

MARGIN = PairedTestConfig(margin=0.1)


def test_identical_scores_pass_with_zero_loss():
    scores = [1, 0] * 100
    test = accuracy_loss(scores, scores, MARGIN, "exact_match")
    assert (test.verdict, test.loss, test.low, test.high, test.n) == ("passed", 0, 0, 0, 200)


def test_always_wrong_challenger_fails():
    test = accuracy_loss([0] * 100, [1] * 100, MARGIN, "exact_match")
    assert test.verdict == "failed" and test.loss == 1.0 and test.low == 1.0


def test_bounds_match_the_normal_approximation_of_a_known_proportion():
    # champion right and challenger wrong on 30 of 200 examples, equal elsewhere: loss 0.15
    champion = [1] * 200
    challenger = [0] * 30 + [1] * 170
    test = accuracy_loss(challenger, champion, PairedTestConfig(margin=0.05), "exact_match")
    se = math.sqrt(0.15 * 0.85 / 200)
    assert test.loss == pytest.approx(0.15)
    assert test.low == pytest.approx(0.15 - 1.645 * se, abs=0.01)
    assert test.high == pytest.approx(0.15 + 1.645 * se, abs=0.01)
    assert test.verdict == "failed"  # lower bound 0.108 > margin 0.05


def test_interval_straddling_the_margin_is_inconclusive():
    champion = [1] * 200
    challenger = [0] * 20 + [1] * 180  # loss 0.10, exactly the margin
    test = accuracy_loss(challenger, champion, MARGIN, "exact_match")
    assert test.verdict == "inconclusive" and test.low < 0.1 < test.high


def test_discordant_pairs_both_ways_pass_a_margin_three_standard_errors_away():
    champion = [1] * 10 + [0] * 10 + [1] * 180
    challenger = [0] * 10 + [1] * 10 + [1] * 180
    test = accuracy_loss(challenger, champion, MARGIN, "exact_match")
    assert test.loss == 0 and test.verdict == "passed" and test.high < 0.1


def test_too_few_examples_is_inconclusive_even_when_identical():
    test = accuracy_loss([1] * 10, [1] * 10, PairedTestConfig(margin=0.1, min_examples=20), "em")
    assert test.verdict == "inconclusive" and test.n == 10
    assert accuracy_loss([], [], MARGIN, "em").verdict == "inconclusive"


def test_log_perplexity_loss_is_the_token_weighted_mean_difference():
    tokens = [10, 20, 30, 40] * 25
    champion = [2.0 * t for t in tokens]  # 2 nats per token
    worse = [2.1 * t for t in tokens]  # 2.1 nats per token: perplexity up by e^0.1 = 10.5%
    margin = PairedTestConfig(margin=math.log1p(0.05))
    test = log_perplexity_loss(worse, champion, tokens, margin)
    assert test.loss == pytest.approx(0.1) and test.low == pytest.approx(0.1)
    assert test.verdict == "failed"
    same = log_perplexity_loss(champion, champion, tokens, margin)
    assert same.verdict == "passed" and same.loss == 0
    better = log_perplexity_loss([1.9 * t for t in tokens], champion, tokens, margin)
    assert better.verdict == "passed" and better.loss == pytest.approx(-0.1)


def test_mismatched_lengths_and_bad_config_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        accuracy_loss([1, 0], [1], MARGIN, "em")
    with pytest.raises(ValueError, match="confidence"):
        PairedTestConfig(margin=0.1, confidence=1.0)
    with pytest.raises(ValueError, match="margin"):
        PairedTestConfig(margin=-0.1)
