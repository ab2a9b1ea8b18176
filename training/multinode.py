"""Start and supervise one torchrun agent per host: the launcher of a multi-host job.

    python -m training.multinode --spec SPEC.json

The spec names the hosts (address, how to run a command there, the network interface for
gloo), the elastic settings (``training.launch.ElasticLaunch``) and the training flags.
Each agent is started through its host's ``exec`` prefix (``["ssh", "node1"]`` on a
cluster, ``["ip", "netns", "exec", "h1"]`` in tests; empty for this machine) with the
forwarded environment spelled out as ``env K=V`` so it survives ssh. Agent output is
relayed line by line, prefixed with the host, to this process's stdout.

The job succeeded when the model artifact was written by this launch with every step
done, even if some agents failed on the way (a host lost mid-run exits non-zero while
the group finishes without it). Exit codes: 0 success, 1 failure (each agent's code named).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field

from training.launch import ElasticLaunch

#: Environment every agent gets from the launcher's own, when set there.
FORWARD = (
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS",
    "PYTHONPATH",
    "MLFLOW_TRACKING_URI",
    "MLOPS_LOG_FORMAT",
    "DAGSTER_RUN_ID",
    "DAGSTER_PIPES_CONTEXT",
    "DAGSTER_PIPES_MESSAGES",
)


class HostSpec(BaseModel):
    address: str = Field(description="address the host is reached at by the other hosts")
    exec: list[str] = Field(default_factory=list, description="command prefix to run there")
    ifname: str | None = Field(None, description="interface gloo binds to (GLOO_SOCKET_IFNAME)")


class TrainSpec(BaseModel):
    data: str
    output: str
    max_steps: int
    checkpoint_every: int
    seed: int = 0
    config_file: str | None = None
    extra: list[str] = Field(default_factory=list)


class JobSpec(BaseModel):
    hosts: list[HostSpec] = Field(min_length=1)
    launch: ElasticLaunch
    train: TrainSpec


def agent_command(spec: JobSpec, i: int, launch: ElasticLaunch) -> list[str]:
    host, t = spec.hosts[i], spec.train
    env = {k: os.environ[k] for k in FORWARD if k in os.environ}
    if host.ifname:
        env["GLOO_SOCKET_IFNAME"] = host.ifname
    torchrun = launch.command(
        host.address,
        is_store_host=i == 0,
        data=Path(t.data),
        output=Path(t.output),
        max_steps=t.max_steps,
        checkpoint_every=t.checkpoint_every,
        seed=t.seed,
        config_file=t.config_file,
        extra=t.extra,
    )
    return [*host.exec, "env", *(f"{k}={v}" for k, v in env.items()), *torchrun]


def _relay(prefix: str, stream, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"{prefix}{line}")
            sys.stdout.flush()


def finished(output: Path, max_steps: int, since: float) -> bool:
    path = output / "model" / "training_summary.json"
    if not path.is_file() or path.stat().st_mtime < since:
        return False
    return json.loads(path.read_text(encoding="utf-8")).get("steps") == max_steps


def run(spec: JobSpec) -> int:
    launch = spec.launch
    started, lock = time.time(), threading.Lock()
    procs, relays = [], []
    for i in range(len(spec.hosts)):
        proc = subprocess.Popen(
            agent_command(spec, i, launch),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        relay = threading.Thread(target=_relay, args=(f"[host{i}] ", proc.stdout, lock))
        relay.start()
        procs.append(proc)
        relays.append(relay)
    codes = [p.wait() for p in procs]
    for relay in relays:
        relay.join()
    if finished(Path(spec.train.output), spec.train.max_steps, started):
        if any(codes):
            print(f"job finished; agents exited with {codes} (hosts lost on the way)")
        return 0
    print(
        f"error: the job did not finish: agents exited with {codes} "
        f"(host i -> code); see their output above",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.multinode", description=__doc__)
    p.add_argument("--spec", type=Path, required=True, help="JSON job spec")
    args = p.parse_args(argv)
    try:
        spec = JobSpec.model_validate_json(args.spec.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: --spec {args.spec}: {exc}", file=sys.stderr)
        return 2
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
