"""Operator commands on the registry: status, promote, rollback, recover, history.

    python -m registry status
    python -m registry promote --version 7 [--force-reason "..."]
    python -m registry rollback --reason "canary error rate 4%"
    python -m registry recover
    python -m registry history [--alias champion] [--json]
    python -m registry history --at 2026-11-25T14:30:00Z     # which version served then

The registry is found as ``RegistryConfig.resolve`` finds it (``MLFLOW_TRACKING_URI`` or
the embedded store under ``$MLOPS_HOME``). Exit status 0 on success or no-op, 2 on a
refused request (gate, conflict, nothing to roll back), 3 when MLflow is unreachable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from registry.aliases import CHAMPION
from registry.client import RegistryClient
from registry.config import MODEL_NAME, RegistryConfig
from registry.errors import RegistryError, RegistryUnavailableError
from registry.history import HistoryEntry, parse_time
from registry.promotion import (
    ForcedPromotion,
    StepHook,
    pending_promotion,
    promote,
    recover,
    rollback,
    settled_history,
)


def _line(e: HistoryEntry) -> str:
    reason = e.reason.replace("\n", " ")
    return (
        f"{e.at}  {e.alias:<17} {e.from_version or '-':>4} -> {e.to_version:<4} {e.kind:<16} "
        f"by {e.actor}  [{e.status}]  {reason}"
    )


def _history(client: RegistryClient, args: argparse.Namespace) -> int:
    history = settled_history(client)
    if args.at:
        when = parse_time(args.at)
        alias = args.alias or CHAMPION
        entry = history.holder_at(when, alias)
        answer = {"at": when.isoformat(), "alias": alias, "version": None, "since": None}
        if entry is not None:
            answer.update(version=entry.to_version, since=entry.at, move=entry.to_dict())
        if args.json:
            print(json.dumps(answer))
        elif entry is None:
            print(f"no {alias} at {when.isoformat()}")
        else:
            print(f"v{entry.to_version} was {alias} at {when.isoformat()} (since {entry.at})")
            print(_line(entry))
        return 0
    entries = history.entries(args.alias)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries]))
    else:
        print("\n".join(_line(e) for e in entries) or "no alias moves recorded")
    return 0


def main(argv: list[str] | None = None, at_step: StepHook | None = None) -> int:
    """The CLI; ``at_step`` is the test seam of :mod:`registry.promotion`, None in use."""
    parser = argparse.ArgumentParser(prog="python -m registry", description=__doc__.splitlines()[0])
    parser.add_argument("--actor", default=f"cli:{getpass.getuser()}")
    parser.add_argument("--model", default=MODEL_NAME, help="registered model name")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="print aliases and any pending promotion as JSON")
    p = sub.add_parser("promote", help="make a version champion (gated)")
    p.add_argument("--version", required=True)
    p.add_argument("--force-reason", default="", help="promote despite the gate; recorded")
    r = sub.add_parser("rollback", help="champion back to previous-champion")
    r.add_argument("--reason", required=True)
    sub.add_parser("recover", help="finish a promotion that crashed halfway")
    h = sub.add_parser("history", help="every alias move, oldest first; --at: who served then")
    h.add_argument("--alias", choices=["champion", "challenger", "previous-champion"])
    h.add_argument("--at", default="", help="ISO-8601 time: the version the alias held then")
    h.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    client = RegistryClient(RegistryConfig.resolve(model_name=args.model, experiment=args.model))
    try:
        if args.command == "status":
            print(json.dumps({"aliases": client.aliases(), "pending": pending_promotion(client)}))
            return 0
        if args.command == "history":
            return _history(client, args)
        if args.command == "promote":
            force = ForcedPromotion(args.force_reason) if args.force_reason else None
            change = promote(client, args.version, args.actor, force=force, at_step=at_step)
        elif args.command == "rollback":
            change = rollback(client, args.reason, args.actor, at_step=at_step)
        else:
            change = recover(client, args.actor)
        print(change.message if change else "no pending promotion")
        return 0
    except RegistryUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (RegistryError, ValueError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
