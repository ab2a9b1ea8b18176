"""Time to rollback: a live canary stops answering -> its weight is 0.

``python benchmarks/rollback_time.py`` brings up the local stack (``python -m serving up``)
with a small random model as stable, keeps client traffic flowing through the gateway, and
runs the canary controller with a copy of the model as challenger (no probe set: this
measures the reaction, not quality). Once the canary holds 50% of traffic it is frozen
with SIGSTOP (it hangs: connections accepted, nothing answered, the hardest failure to
notice), and the time until the gateway's canary weight reads 0 is measured. Two ways:

* fast health watcher: ``check_canary_health`` every 0.5 s (target <= 10 s);
* baseline: analysis only at the end of a 10 s window, as interval-based analysers do.

Also counts client requests that failed during the run (expected: zero; canary timeouts
are retried on stable).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from engine_batching import build_tiny_model  # noqa: E402

from serving.canary import CanaryConfig, CanaryController  # noqa: E402
from serving.gateway.client import GatewayAdmin  # noqa: E402
from serving.stack import SupervisedFleet, engine_name  # noqa: E402
from serving.supervisor import StackPaths  # noqa: E402

TOKEN = "bench-token"
WINDOW_S = 10.0


def load(url: str, stop: threading.Event, failures: list[str], ok: list[int]) -> None:
    body = {"model": "sovereign-lm", "prompt": "Q: sort 3 1 2 A:", "max_tokens": 4}
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            try:
                r = client.post(f"{url}/v1/completions", json=body)
                if r.status_code == 200:
                    ok[0] += 1
                else:
                    failures.append(str(r.status_code))
            except httpx.HTTPError as exc:
                failures.append(repr(exc))


def trial(admin: GatewayAdmin, fleet: SupervisedFleet, challenger: Path, poll_s: float) -> float:
    config = CanaryConfig(
        steps=(50.0, 100.0), window_s=WINDOW_S, poll_s=poll_s, request_timeout_s=2.0
    )
    controller = CanaryController(admin, fleet, config)
    result = {}
    runner = threading.Thread(
        target=lambda: result.update(r=controller.run(challenger, [], lambda: None))
    )
    runner.start()
    while admin.state()["routes"]["sovereign-lm"]["canary_weight"] != 50.0:
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(fleet.pid(engine_name(challenger)), signal.SIGSTOP)
    frozen = time.monotonic()
    while admin.state()["routes"]["sovereign-lm"]["canary_weight"] != 0.0:
        time.sleep(0.02)
    elapsed = time.monotonic() - frozen
    runner.join(120)
    assert result["r"].decision == "rolled_back", result["r"]
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        stable = build_tiny_model(Path(tmp) / "stable", hidden=64, layers=2)
        challenger = Path(tmp) / "challenger"
        shutil.copytree(stable, challenger)
        env = {
            **os.environ,
            "MLOPS_HOME": str(home),
            "MLOPS_GATEWAY_ADMIN_TOKEN": TOKEN,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        os.environ.update(env)
        up = subprocess.run(
            [sys.executable, "-m", "serving", "up", "--model", str(stable)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if up.returncode != 0:
            raise SystemExit(up.stderr)
        gateway = json.loads(up.stdout)["gateway"]["url"]
        admin = GatewayAdmin(gateway, TOKEN)
        fleet = SupervisedFleet(StackPaths.under(home))
        stop, failures, ok = threading.Event(), [], [0]
        workers = [
            threading.Thread(target=load, args=(gateway, stop, failures, ok)) for _ in range(3)
        ]
        try:
            for w in workers:
                w.start()
            fast = trial(admin, fleet, challenger, poll_s=0.5)
            baseline = trial(admin, fleet, challenger, poll_s=WINDOW_S)
        finally:
            stop.set()
            for w in workers:
                w.join(60)
            subprocess.run(
                [sys.executable, "-m", "serving", "down"],
                cwd=REPO,
                env=env,
                capture_output=True,
                timeout=120,
            )
    print(f"fast health watcher : {fast:6.2f} s from canary hang to weight 0 (target <= 10 s)")
    print(f"window-end analysis : {baseline:6.2f} s ({WINDOW_S:.0f} s analysis window)")
    print(f"ratio               : {baseline / fast:.1f}x faster than the baseline")
    print(f"client requests     : {ok[0]} ok, {len(failures)} failed {failures[:3]}")


if __name__ == "__main__":
    main()
