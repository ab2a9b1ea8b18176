"""Contract: ``plan_rollout`` turns the registry's aliases into the deployment's action:
serve the champion (no challenger, challenger already champion, or rolled back before),
deploy the first model directly, or roll the challenger out as a canary; with nothing
that may serve it refuses, naming why."""

from __future__ import annotations

import pytest

from serving.rollout_plan import (
    NothingToServe,
    RolloutAction,
    RolloutRequest,
    plan_rollout,
)


@pytest.mark.parametrize(
    ("challenger", "champion", "rolled_back", "action", "said"),
    [
        (None, "1", None, RolloutAction.SERVE_CHAMPION, "no challenger; v1 serves"),
        ("2", "2", None, RolloutAction.SERVE_CHAMPION, "v2 already champion"),
        ("3", "2", "p95 doubled", RolloutAction.SERVE_CHAMPION, "rolled back before (p95"),
        ("1", None, None, RolloutAction.FIRST_DEPLOYMENT, "no champion yet: v1 promoted"),
        ("3", "2", None, RolloutAction.CANARY, ""),
    ],
)
def test_each_registry_state_has_its_action(challenger, champion, rolled_back, action, said):
    plan = plan_rollout(
        RolloutRequest(challenger=challenger, champion=champion, challenger_rolled_back=rolled_back)
    )
    assert plan.action is action
    assert said in plan.reason


def test_nothing_to_serve_is_refused_with_the_reason():
    with pytest.raises(NothingToServe, match="neither a challenger nor a champion"):
        plan_rollout(RolloutRequest(challenger=None, champion=None))
    with pytest.raises(NothingToServe, match="only candidate, v1, was rolled back"):
        plan_rollout(RolloutRequest(challenger="1", champion=None, challenger_rolled_back="bad"))


def test_the_request_takes_keywords_only():
    with pytest.raises(TypeError):
        RolloutRequest("1", "2")  # type: ignore[misc]
