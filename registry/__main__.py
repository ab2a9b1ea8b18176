"""Operator commands on the registry: status, promote, rollback, recover.

    python -m registry status
    python -m registry promote --version 7 [--force-reason "..."]
    python -m registry rollback --reason "canary error rate 4%"
    python -m registry recover

The registry is found as ``RegistryConfig.resolve`` finds it (``MLFLOW_TRACKING_URI`` or
the embedded store under ``$MLOPS_HOME``). Exit status 0 on success or no-op, 2 on a
refused request (gate, conflict, nothing to roll back), 3 when MLflow is unreachable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from registry.client import RegistryClient
from registry.config import MODEL_NAME, RegistryConfig
from registry.errors import RegistryError, RegistryUnavailableError
from registry.promotion import ForcedPromotion, pending_promotion, promote, recover, rollback


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    client = RegistryClient(RegistryConfig.resolve(model_name=args.model, experiment=args.model))
    try:
        if args.command == "status":
            print(json.dumps({"aliases": client.aliases(), "pending": pending_promotion(client)}))
            return 0
        if args.command == "promote":
            force = ForcedPromotion(args.force_reason) if args.force_reason else None
            change = promote(client, args.version, args.actor, force=force)
        elif args.command == "rollback":
            change = rollback(client, args.reason, args.actor)
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
