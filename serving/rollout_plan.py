"""What a deployment should do, from the registry's aliases: the rollout decision.

Pure logic, no I/O: the caller reads the registry and hands in a :class:`RolloutRequest`
(the ``challenger`` and ``champion`` versions, and the reason the challenger was rolled
back before, if it was); :func:`plan_rollout` answers with a :class:`RolloutPlan`:

* neither a challenger nor a champion: :class:`NothingToServe`, there is no model;
* no challenger, or the challenger already is champion: serve the champion (no-op);
* the challenger was rolled back before: serve the champion (no-op), or
  :class:`NothingToServe` when there is no champion: a rolled-back version needs a new
  registration or a forced promotion, never a silent second attempt;
* no champion yet: serve the challenger directly and promote it (there is no stable model
  to compare a canary with);
* otherwise: a canary rollout of the challenger against the champion.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RolloutAction(StrEnum):
    SERVE_CHAMPION = "serve_champion"
    FIRST_DEPLOYMENT = "first_deployment"
    CANARY = "canary"


class NothingToServe(ValueError):
    """No version may serve: register one that passes the gate first."""


@dataclass(frozen=True, kw_only=True)
class RolloutRequest:
    challenger: str | None
    champion: str | None
    challenger_rolled_back: str | None = None  # the recorded reason, when it was rolled back


@dataclass(frozen=True, kw_only=True)
class RolloutPlan:
    action: RolloutAction
    reason: str  # why, for the operator; empty for a rollout whose outcome says why


def plan_rollout(request: RolloutRequest) -> RolloutPlan:
    challenger, champion = request.challenger, request.champion
    if challenger is None and champion is None:
        raise NothingToServe(
            "there is neither a challenger nor a champion: register a model that passes the "
            "gate (the `train` job) first"
        )
    if challenger is None or challenger == champion:
        why = "no challenger" if challenger is None else f"v{champion} already champion"
        return RolloutPlan(action=RolloutAction.SERVE_CHAMPION, reason=f"{why}; v{champion} serves")
    if request.challenger_rolled_back is not None:
        if champion is None:
            raise NothingToServe(
                f"the only candidate, v{challenger}, was rolled back "
                f"({request.challenger_rolled_back!r}) and there is no champion to serve"
            )
        return RolloutPlan(
            action=RolloutAction.SERVE_CHAMPION,
            reason=f"v{challenger} was rolled back before ({request.challenger_rolled_back}); "
            "register a new model or force its promotion",
        )
    if champion is None:
        return RolloutPlan(
            action=RolloutAction.FIRST_DEPLOYMENT,
            reason=f"no champion yet: v{challenger} promoted directly (no stable model to "
            "canary against)",
        )
    return RolloutPlan(action=RolloutAction.CANARY, reason="")
