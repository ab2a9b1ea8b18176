"""Moving the ``champion`` alias: gated promotion and rollback, crash-safe and race-safe.

Promotion of version B over champion A, under the registry lock (``locking.py``):

1. refuse unless B passed the gate (or the request is an explicit, reasoned force) and B
   was never rolled back;
2. re-read the aliases: if B already is champion, it is a retry: do nothing. If the
   champion is not the one B was evaluated against (``gate.champion_version``), refuse
   with ``PromotionConflictError``: B beat a model that no longer serves;
3. record the intent (registered-model tag ``promotion.pending``), the move in the alias
   history as pending (``history.py``) and B's promotion tags;
4. ``previous-champion`` -> A, then ``champion`` -> B, then read back and verify;
5. mark the history rows done, clear the intent.

Every prefix of this sequence is a consistent registry: until step 4's second write the
champion is still A (and after the first write ``previous-champion`` is A too, which is
exactly what it will be). A crashed promotion is finished by running it again, or by
``recover``, which replays a pending intent. Rollback sets ``champion`` to
``previous-champion`` and leaves both pointing at the same version, so running it twice
is a no-op; the reason is tagged on the version that was rolled back. Every move (and the
``challenger`` alias set at registration, :func:`set_challenger`) is appended to the alias
history with its actor, kind, reason and evidence; each operation first settles history
rows a crashed move left pending.

Test seam: ``promote`` and ``rollback`` take an optional ``at_step`` callback, called with
the name of each point between writes (``promote:after-previous-champion``,
``promote:after-champion``, ``rollback:after-tags``). Production passes none; the
crash-recovery tests pass one that SIGKILLs the process there (``testing.registry_crash``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass

from registry.aliases import CHALLENGER, CHAMPION, PREVIOUS
from registry.client import RegistryClient
from registry.errors import (
    GateNotPassedError,
    PromotionConflictError,
    RegistryInconsistentError,
    RollbackUnavailableError,
)
from registry.history import AliasHistory, AliasMove, history_url
from registry.locking import registry_lock
from registry.tags import RollbackTags, set_version_tags

PENDING_TAG = "promotion.pending"
LAST_ROLLBACK_TAG = "rollback.last"
#: Called with the name of each point between a move's writes; see the module docstring.
StepHook = Callable[[str], None]
_UNSET = object()


@dataclass(frozen=True)
class ForcedPromotion:
    """Explicit override of a failed gate; the reason is recorded on the version."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("a forced promotion needs a non-empty reason")


@dataclass(frozen=True)
class AliasChange:
    changed: bool  # False: the registry already was in the requested state
    champion: str | None
    previous_champion: str | None
    message: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _lock(client: RegistryClient):
    cfg = client.config
    return registry_lock(cfg.lock_url, cfg.model_name, cfg.lock_timeout_s)


def alias_history(client: RegistryClient) -> AliasHistory:
    cfg = client.config
    return AliasHistory(history_url(cfg.lock_url), cfg.model_name, client.call)


def _gate_evidence(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith(("gate.", "eval."))}


def settled_history(client: RegistryClient) -> AliasHistory:
    """The alias history with any rows of a crashed move settled (takes the lock)."""
    history = alias_history(client)
    with _lock(client):
        history.reconcile(client.aliases())
    return history


def _set_alias(client: RegistryClient, alias: str, version: str) -> None:
    name = client.config.model_name
    client.call(
        f"set alias {alias}", client.mlflow.set_registered_model_alias, name, alias, version
    )


def _verify(client: RegistryClient, champion: str, previous: str | None) -> dict[str, str]:
    aliases = client.aliases()
    if aliases.get(CHAMPION) != champion or (previous and aliases.get(PREVIOUS) != previous):
        raise RegistryInconsistentError(
            f"after writing champion={champion}, previous-champion={previous} the registry "
            f"reads {aliases}; a writer bypassed the registry lock. Inspect the aliases, then "
            "run the promotion again"
        )
    return aliases


def promote(
    client: RegistryClient,
    version: str,
    actor: str,
    expected_champion: str | None | object = _UNSET,
    force: ForcedPromotion | None = None,
    kind: str = "promotion",
    reason: str = "",
    evidence: dict | None = None,
    at_step: StepHook | None = None,
) -> AliasChange:
    """Make ``version`` the champion; see the module docstring for the protocol.

    ``expected_champion`` defaults to the champion the version was evaluated against
    (its ``gate.champion_version`` tag); pass it explicitly only to override that.
    ``kind``, ``reason`` and ``evidence`` (for example the canary's verdict) go to the
    alias history, with the version's gate verdict added to the evidence.
    """
    version = str(version)
    name = client.config.model_name
    tags = client.version_tags(version)
    if tags.get("gate.passed") != "true" and force is None:
        raise GateNotPassedError(
            f"version {version} of {name} did not pass the evaluation gate "
            f"(gate.passed={tags.get('gate.passed')!r}): {tags.get('gate.reasons', '')!r}; "
            "promote it only with an explicit forced promotion and a reason"
        )
    rolled_back = RollbackTags.from_tags(tags)
    if rolled_back is not None and force is None:
        raise GateNotPassedError(
            f"version {version} of {name} was rolled back ({rolled_back.reason!r}); "
            "promote it again only with an explicit forced promotion and a reason"
        )
    if expected_champion is _UNSET:
        evaluated_against = tags.get("gate.champion_version", "none")
        expected_champion = None if evaluated_against == "none" else evaluated_against
    history = alias_history(client)
    with _lock(client):
        aliases = client.aliases()
        history.reconcile(aliases)
        current = aliases.get(CHAMPION)
        if current == version:
            intent = pending_promotion(client)
            if intent is not None and intent["to"] == version:  # finish a crashed promotion
                client.call(
                    "delete_registered_model_tag",
                    client.mlflow.delete_registered_model_tag,
                    name,
                    PENDING_TAG,
                )
            return AliasChange(
                False, version, aliases.get(PREVIOUS), f"v{version} already champion"
            )
        if force is None and current != expected_champion:
            raise PromotionConflictError(
                f"champion of {name} is v{current}, but v{version} was evaluated against "
                f"{'v' + str(expected_champion) if expected_champion else 'no champion'}; "
                f"re-evaluate v{version} against v{current} before promoting it"
            )
        intent = {"from": current, "to": version, "by": actor, "at": _now(), "forced": bool(force)}
        client.call(
            "set_registered_model_tag",
            client.mlflow.set_registered_model_tag,
            name,
            PENDING_TAG,
            json.dumps(intent),
        )
        if force is not None:
            kind, reason = "forced-promotion", force.reason
        moves = [AliasMove(CHAMPION, current, version)]
        if current is not None:
            moves.insert(0, AliasMove(PREVIOUS, aliases.get(PREVIOUS), current))
        move = history.begin(
            moves,
            actor,
            kind,
            reason or f"gate passed against {'v' + current if current else 'no champion'}",
            {"gate": _gate_evidence(tags), **(evidence or {})},
        )
        promotion_tags = {
            "promotion.promoted_by": actor,
            "promotion.promoted_at": intent["at"],
            "promotion.replaced": current or "none",
            "promotion.forced": "true" if force else "false",
        }
        if force is not None:
            promotion_tags["promotion.force_reason"] = force.reason
        set_version_tags(client, version, promotion_tags)
        if current is not None:
            _set_alias(client, PREVIOUS, current)
        if at_step is not None:
            at_step("promote:after-previous-champion")
        _set_alias(client, CHAMPION, version)
        if at_step is not None:
            at_step("promote:after-champion")
        aliases = _verify(client, version, current)
        history.complete(move)
        client.call(
            "delete_registered_model_tag",
            client.mlflow.delete_registered_model_tag,
            name,
            PENDING_TAG,
        )
    over = f"over v{current}" if current is not None else "as the first champion"
    return AliasChange(True, version, aliases.get(PREVIOUS), f"v{version} promoted {over}")


def pending_promotion(client: RegistryClient) -> dict | None:
    raw = client.model_tags().get(PENDING_TAG)
    return json.loads(raw) if raw else None


def recover(client: RegistryClient, actor: str) -> AliasChange | None:
    """Finish a promotion that crashed between its alias writes; ``None`` if none pending."""
    intent = pending_promotion(client)
    if intent is None:
        return None
    force = (
        ForcedPromotion(f"recovering forced promotion by {intent['by']}")
        if intent["forced"]
        else None
    )
    return promote(
        client,
        intent["to"],
        actor,
        expected_champion=intent["from"],
        force=force,
        kind="recover",
        reason=f"finishing the promotion {intent['by']} began at {intent['at']}",
    )


def rollback(
    client: RegistryClient,
    reason: str,
    actor: str,
    evidence: dict | None = None,
    at_step: StepHook | None = None,
) -> AliasChange:
    """Point ``champion`` back at ``previous-champion``; a no-op when already there."""
    if not reason.strip():
        raise ValueError("rollback needs a non-empty reason")
    name = client.config.model_name
    history = alias_history(client)
    with _lock(client):
        aliases = client.aliases()
        history.reconcile(aliases)
        current, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if previous is None:
            raise RollbackUnavailableError(
                f"{name} has no previous-champion alias (champion={current}); nothing to roll "
                "back to. Promote a known-good version instead"
            )
        if current == previous:
            return AliasChange(False, current, previous, f"v{current} already champion")
        move = history.begin(
            [AliasMove(CHAMPION, current, previous)], actor, "rollback", reason, evidence
        )
        at = _now()
        if current is not None:
            rolled_back = RollbackTags(reason=reason, by=actor, at=at, to=previous)
            set_version_tags(client, current, rolled_back.tags())
        record = {"from": current, "to": previous, "by": actor, "at": at, "reason": reason}
        client.call(
            "set_registered_model_tag",
            client.mlflow.set_registered_model_tag,
            name,
            LAST_ROLLBACK_TAG,
            json.dumps(record),
        )
        if at_step is not None:
            at_step("rollback:after-tags")
        _set_alias(client, CHAMPION, previous)
        aliases = _verify(client, previous, previous)
        history.complete(move)
    return AliasChange(True, previous, previous, f"rolled back from v{current} to v{previous}")


def set_challenger(client: RegistryClient, version: str, actor: str, evidence: dict) -> bool:
    """Point ``challenger`` at ``version`` (it passed the gate); ``False`` if it already was."""
    name = client.config.model_name
    history = alias_history(client)
    with _lock(client):
        aliases = client.aliases()
        history.reconcile(aliases)
        current = aliases.get(CHALLENGER)
        if current == str(version):
            return False
        move = history.begin(
            [AliasMove(CHALLENGER, current, str(version))],
            actor,
            "registration",
            f"v{version} passed the evaluation gate",
            evidence,
        )
        _set_alias(client, CHALLENGER, str(version))
        if client.aliases().get(CHALLENGER) != str(version):
            raise RegistryInconsistentError(
                f"challenger of {name} does not read back as v{version}; a writer bypassed the "
                "registry lock. Register the model again"
            )
        history.complete(move)
    return True
