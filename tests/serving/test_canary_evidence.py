"""Contract: a canary step passes only on evidence, and quality probes work on any corpus.

* With no user traffic and nothing to probe with, a rollout never passes a step on zero
  requests: it holds, then ends ``inconclusive`` (traffic back on stable, no promotion, the
  model not blamed). With probes, the controller supplies the evidence itself, through the
  gateway, and each step records how many canary requests came from users and from probes.
* On a plain-text corpus (no tasks), canary and stable are compared by the likelihood of
  held-out texts through the completions API (``echo``/``logprobs``): a random-weights canary
  is rolled back; the same weights under another name pass.

Real engine processes behind the real gateway (``python -m serving up``); the stable model is
trained in-process on the corpus's train split, the bad canary has random weights of the same
architecture and tokenizer.
"""

from __future__ import annotations

import math
import shutil

import pytest

from serving.canary import CanaryConfig, CanaryController
from serving.canary_evidence import Evidence, ProbeSet, compare_likelihood, probe_route
from serving.gateway.client import GatewayAdmin
from serving.stack import SupervisedFleet, engine_name
from serving.supervisor import StackPaths

FAST = dict(window_s=1.0, poll_s=0.25, steps=(50.0, 100.0), p95_slack_s=0.5, min_requests=8)


def test_likelihood_comparison_decides_only_when_the_interval_allows():
    same = compare_likelihood([2.0, 2.1, 1.9, 2.0, 2.2], [2.0, 2.1, 1.9, 2.0, 2.2], 0.1, 0.95, 5)
    assert same.verdict == "pass" and same.mean_diff == 0.0
    worse = compare_likelihood([5.7, 5.8, 5.9, 5.6, 5.8], [2.0, 2.1, 1.9, 2.0, 2.2], 0.1, 0.95, 5)
    assert worse.verdict == "fail" and worse.lower > 0.1
    noisy = compare_likelihood([2.0, 3.0, 1.0, 2.5, 1.5], [2.0, 2.0, 2.0, 2.0, 2.0], 0.1, 0.95, 5)
    assert noisy.verdict == "inconclusive" and noisy.lower < 0.1 < noisy.upper
    few = compare_likelihood([9.0, 9.0], [1.0, 1.0], 0.1, 0.95, 5)
    assert few.verdict == "inconclusive"
    one = compare_likelihood([9.0], [1.0], 0.1, 0.95, 1)
    assert one.verdict == "inconclusive" and math.isinf(one.upper)


def test_evidence_counts_users_and_probes_apart():
    none = Evidence(0, 0, 0, 0, min_requests=20)
    assert not none.sufficient and none.source == "none" and none.error_rate == 0.0
    mixed = Evidence(5, 1, 15, 0, min_requests=20)
    assert mixed.sufficient and mixed.source == "user+probe" and mixed.error_rate == 0.05
    assert mixed.to_dict()["requests"] == 20
    with pytest.raises(ValueError, match="zero evidence"):
        CanaryConfig(min_requests=0)


@pytest.fixture(scope="module")
def task_stack(stack_factory, good_model_dir, helpers):
    home, info = stack_factory(good_model_dir)
    return GatewayAdmin(info["gateway"]["url"], helpers.admin_token), SupervisedFleet(
        StackPaths.under(home)
    )


@pytest.mark.slow
def test_no_user_traffic_and_no_probes_is_inconclusive_never_promoted(task_stack, challenger_copy):
    admin, fleet = task_stack
    stable = admin.state()["routes"]["sovereign-lm"]["stable"]
    promoted, blamed = [], []
    controller = CanaryController(admin, fleet, CanaryConfig(**FAST, max_hold_s=1.0))
    result = controller.run(challenger_copy, ProbeSet(), lambda: promoted.append(1), blamed.append)
    assert result.decision == "inconclusive" and not promoted and not blamed
    step = result.timeline[-1]
    assert step.weight == 50.0 and not step.passed and step.verdict == "inconclusive"
    assert step.evidence["requests"] == 0 and step.evidence["source"] == "none"
    assert step.evidence["held_s"] >= 1.0
    assert "0 canary requests" in result.reason
    state = admin.state()
    assert state["routes"] == {
        "sovereign-lm": {"stable": stable, "canary": None, "canary_weight": 0.0}
    }
    assert engine_name(challenger_copy) not in state["backends"]


@pytest.mark.slow
def test_without_user_traffic_probes_through_the_gateway_are_the_evidence(
    task_stack, probe_tasks, challenger_copy, tmp_path
):
    admin, fleet = task_stack
    from serving.canary import Probe

    candidate = tmp_path / "candidate"
    shutil.copytree(challenger_copy, candidate)  # a fresh engine name: a distinct version
    probes = ProbeSet(tuple(Probe(p, a) for p, a in probe_tasks), source="test tasks")
    promoted = []
    controller = CanaryController(admin, fleet, CanaryConfig(**FAST))
    result = controller.run(candidate, probes, lambda: promoted.append(1))
    assert result.decision == "promoted", result.reason
    for step in result.timeline[1:]:
        assert step.passed and step.verdict == "pass"
        assert step.evidence["user_requests"] == 0
        assert step.evidence["probe_requests"] >= FAST["min_requests"]
        assert step.evidence["source"] == "probe"
    assert probe_route("sovereign-lm") not in admin.state()["routes"]


@pytest.fixture(scope="module")
def plain_stack(stack_factory, plain_model_dirs, helpers):
    trained, _ = plain_model_dirs
    home, info = stack_factory(trained)
    return GatewayAdmin(info["gateway"]["url"], helpers.admin_token), SupervisedFleet(
        StackPaths.under(home)
    )


@pytest.mark.slow
def test_random_weights_canary_is_rolled_back_on_a_plain_text_corpus(
    plain_stack, plain_model_dirs, plain_texts
):
    admin, fleet = plain_stack
    _, random_dir = plain_model_dirs
    _, heldout = plain_texts
    blamed = []
    controller = CanaryController(admin, fleet, CanaryConfig(**FAST))
    probes = ProbeSet(texts=tuple(heldout), source="held-out texts")
    result = controller.run(random_dir, probes, lambda: pytest.fail("promoted"), blamed.append)
    assert result.decision == "rolled_back" and blamed == [result.reason]
    assert "likelihood" in result.reason
    verdict = result.timeline[-1].likelihood
    assert verdict["verdict"] == "fail" and verdict["texts"] == len(heldout)
    assert verdict["canary_nll"] > verdict["stable_nll"] + 1.0
    assert engine_name(random_dir) not in admin.state()["backends"]


@pytest.mark.slow
def test_same_weights_pass_the_likelihood_probe_on_a_plain_text_corpus(
    plain_stack, plain_model_dirs, plain_texts, tmp_path
):
    admin, fleet = plain_stack
    trained, _ = plain_model_dirs
    _, heldout = plain_texts
    copy = tmp_path / "same-weights"
    shutil.copytree(trained, copy)
    controller = CanaryController(admin, fleet, CanaryConfig(**FAST))
    probes = ProbeSet(texts=tuple(heldout), source="held-out texts")
    result = controller.run(copy, probes, lambda: None)
    assert result.decision == "promoted", result.reason
    assert all(s.likelihood["verdict"] == "pass" for s in result.timeline)
    assert all(s.evidence["probe_requests"] >= FAST["min_requests"] for s in result.timeline[1:])
