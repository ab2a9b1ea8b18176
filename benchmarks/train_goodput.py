"""Goodput of an elastic job under repeated host loss: effective training time over wall time.

    .venv/bin/python benchmarks/train_goodput.py [--minutes 4] [--period 60] [--away 15]

Three hosts (network namespaces, as in tests/training/multihost; needs root), one worker
each, ``--nnodes 1:3`` with the c10d rendezvous on host 0. Every ``--period`` seconds one of
hosts 1 and 2 (in turn) has every process SIGKILLed, and its agent is started again
``--away`` seconds later: the group shrinks, then grows back. At the end the job is
stopped and its sample log read.

Effective training time: the summed duration of the steps that survive in the final
history (``training.elastic.committed_steps``: steps redone after a failure count once,
the lost first try not at all); a step's duration is the gap to the previous step of the
same attempt, and an attempt's first step is charged its median step time. Wall time runs
from the first completed step to the end (the job's cold start is excluded: it is paid
once, failures or not). Baseline, measured in the same run: the same job with no
failures for ``--baseline-s`` seconds. Printed: both goodputs and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import REPO, TORCHRUN, env, make_corpus

sys.path.insert(0, str(REPO / "tests" / "training" / "multihost"))
from hosts import Network, start_agent  # noqa: E402

from training.elastic import committed_steps, read_attempts  # noqa: E402
from training.launch import ElasticLaunch  # noqa: E402


def start(net: Network, i: int, launch: ElasticLaunch, corpus: Path, out: Path, n: int):
    cmd = launch.command(
        net.hosts[i].address,
        is_store_host=i == 0,
        data=corpus,
        output=out,
        max_steps=10**6,
        checkpoint_every=5,
        seed=0,
    )
    return start_agent(net, i, cmd, env(), out.parent / f"agent{i}.{n}.log", REPO)


def run_job(tmp: Path, corpus: Path, seconds: float, period: float, away: float, tag: str):
    """Run a 3-host job for ``seconds`` after its first step; kill a host every ``period``."""
    out = tmp / tag / "run"
    out.parent.mkdir(parents=True)
    net = Network(3, tag=tag)
    launch = ElasticLaunch(
        endpoint=f"{net.hosts[0].address}:29400",
        min_hosts=1,
        max_hosts=3,
        torchrun=TORCHRUN,
        run_id=f"goodput-{tag}",
        collective_timeout_s=30,
        max_restarts=1000,
    )
    events: list[str] = []
    try:
        agents = {i: start(net, i, launch, corpus, out, 0) for i in range(3)}
        while not list((out / "samples").glob("*.jsonl")):
            if all(a.proc.poll() is not None for a in agents.values()):
                raise SystemExit(f"job ended before training:\n{agents[0].text()[-3000:]}")
            time.sleep(0.1)
        began = time.time()
        kills, victim, returns = 0, 1, []
        while time.time() - began < seconds:
            now = time.time() - began
            if period and now >= period * (kills + 1):
                net.kill(victim)
                events.append(f"{now:6.1f}s kill host{victim}")
                returns.append((now + away, victim))
                kills += 1
                victim = 2 if victim == 1 else 1
            for due, host in list(returns):
                if now >= due:
                    agents[host] = start(net, host, launch, corpus, out, kills)
                    events.append(f"{now:6.1f}s host{host} back")
                    returns.remove((due, host))
            time.sleep(0.2)
        ended = time.time()
    finally:
        net.close()
    return out, ended, events


def goodput(out: Path, ended: float) -> tuple[float, float, int]:
    """(effective seconds, wall seconds, committed steps) from the run's sample log."""
    rank0 = [next(r for r in recs if r["rank"] == 0) for recs in committed_steps(out).values()]
    durations: dict[int, float] = {}
    for prev, cur in zip(rank0, rank0[1:], strict=False):
        if cur["attempt"] == prev["attempt"]:
            durations[cur["step"]] = cur["t"] - prev["t"]
    per_attempt: dict[int, list[float]] = {}
    for r in rank0:
        if r["step"] in durations:
            per_attempt.setdefault(r["attempt"], []).append(durations[r["step"]])
    overall = statistics.median(durations.values())
    effective = sum(
        durations.get(r["step"], statistics.median(per_attempt.get(r["attempt"], [overall])))
        for r in rank0
    )
    first = min(r["t"] for r in rank0)
    return effective, ended - first, len(rank0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--period", type=float, default=60.0)
    p.add_argument("--away", type=float, default=15.0)
    p.add_argument("--baseline-s", type=float, default=60.0)
    p.add_argument("--workdir", type=Path, default=None, help="keep the runs here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="goodput-") as tmp_name:
        tmp = args.workdir or Path(tmp_name)
        corpus = tmp / "corpus"
        make_corpus(corpus, 1200)
        base_out, base_end, _ = run_job(tmp, corpus, args.baseline_s, 0, 0, "gpb0")
        b_eff, b_wall, b_steps = goodput(base_out, base_end)
        out, end, events = run_job(tmp, corpus, args.minutes * 60, args.period, args.away, "gpf0")
        eff, wall, steps = goodput(out, end)
        attempts = read_attempts(out)
    print("\n".join(events))
    print(f"world sizes: {[a['world_size'] for a in attempts]}")
    print(f"baseline (no failures): {b_steps} steps, goodput {b_eff / b_wall:.1%} ({b_wall:.0f} s)")
    print(
        f"host killed every {args.period:.0f} s, back after {args.away:.0f} s: {steps} steps, "
        f"effective {eff:.0f} s of {wall:.0f} s wall, goodput {eff / wall:.1%} "
        f"(target >= 90%); ratio to baseline {eff / wall / (b_eff / b_wall):.2f}"
    )


if __name__ == "__main__":
    main()
