"""``python -m serving up [--model DIR] | status | down``: the local serving stack.

``up`` without ``--model`` serves the registry's current ``champion`` (downloaded once to
``$MLOPS_HOME/serving/models/<version>/`` and checked against its registered digest).

``supervise`` is the supervisor process itself, started by ``up``; it is not meant to be
run by hand. ``MLOPS_HOME`` (default ``./.mlops``) is read here, at run time. Logs go to
stderr as text or JSON lines (``MLOPS_LOG_FORMAT``), and the supervisor's children inherit
that setting; results go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from observability.logs import configure_logging
from observability.settings import home_from, mlops_home
from serving import stack
from serving.engine.launcher import EngineUnavailable
from serving.supervisor import StackPaths, Supervisor


def champion_dir(home: Path) -> Path:
    """The champion's model directory, fetched from the registry (which imports MLflow)."""
    from registry import CHAMPION, RegistryClient, RegistryConfig, RegistryError
    from registry.versions import fetch_model_dir

    client = RegistryClient(RegistryConfig.resolve(home))
    try:
        version = client.aliases().get(CHAMPION)
        if version is None:
            raise stack.StackError(
                "the registry has no champion yet: run the main job first, or pass --model DIR"
            )
        return fetch_model_dir(client, version, home / "serving" / "models")
    except RegistryError as exc:
        raise stack.StackError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="MLOPS_HOME (default: env)")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start gateway + engine for the champion model dir")
    start.add_argument(
        "--model", type=Path, default=None, help="model directory (default: the champion)"
    )
    start.add_argument("--gateway-port", type=int, default=None)
    start.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        help="gateway processes sharing its port, each a full replica (state file shared)",
    )
    start.add_argument(
        "--engine",
        choices=["embedded", "vllm"],
        default="embedded",
        help="embedded: this package's CPU engine; vllm: vLLM (`make vllm` installs its CPU build)",
    )
    start.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="engine start limit (default 180 s, vLLM 600 s)",
    )
    commands.add_parser("status", help="print the stack as JSON")
    commands.add_parser("down", help="stop the stack")
    commands.add_parser("supervise", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    home = home_from(args.home) if args.home else mlops_home()

    if args.command == "supervise":
        configure_logging("supervisor")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # health probes every poll
        Supervisor(StackPaths.under(home)).run()
        return 0
    configure_logging("serving-cli", level=logging.WARNING)
    try:
        if args.command == "up":
            model = args.model or champion_dir(home)
            result = stack.up(
                home, model, args.gateway_port, args.engine, args.timeout_s, args.gateway_workers
            )
        elif args.command == "status":
            result = stack.status(home)
        else:
            result = {"stopped": stack.down(home)}
    except (stack.StackError, EngineUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
