"""Serving under overload: capacity, then 1x / 2x / 5x of it, the huge-prompt flood and the
poison mix, on the local stack (``python -m serving up``: supervisor, gateway, embedded
engine) with a small random model.

``python benchmarks/overload.py [--phase-s 60] [--p99-target-s 2.0]``

1. Capacity: open-loop Poisson arrivals at rising rates (``--probe-s`` each); capacity is
   the highest rate at which every request succeeded and p99 latency stayed under
   ``--p99-target-s``.
2. 1x, 2x and 5x of that rate for ``--phase-s`` each: goodput (successful requests/s), p50
   and p99 latency of admitted requests, how many were shed (429) and how fast, any other
   failure. Target: goodput at 5x >= 90% of capacity, shed answers within 50 ms, zero
   engine restarts (read from the supervisor's ``stack.json``).
3. Huge-prompt flood: 30 concurrent 900k-character prompts with small requests beside them;
   the engine's ``/health`` latency and the small requests' outcome.
4. Poison mix: rounds of 1 request with ``seed: 2**64`` + 10 good ones sent together.

Every request uses ``max_tokens`` 16 with EOS unreachable, so each costs the same. The
load generator sends with the gateway's own lean keep-alive client (``UpstreamPool``), since
a general client costs ~1 ms of CPU per request on a 2-core machine and would otherwise be
the bottleneck it claims to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from engine_batching import build_tiny_model  # noqa: E402

from serving.gateway.upstream import UpstreamError, UpstreamPool  # noqa: E402

ROUTE = "sovereign-lm"
TOKEN = "bench-token"
BODY = {"model": ROUTE, "prompt": "Q: what comes after 41? A:", "max_tokens": 16}
RAW = json.dumps(BODY).encode()
JSON = {"content-type": "application/json"}


@dataclass
class Phase:
    rate: float
    seconds: float
    ok: list[float] = field(default_factory=list)  # latencies of 200s
    ok_in_window: int = 0  # 200s completed before the phase ended
    shed: list[float] = field(default_factory=list)  # latencies of 429s
    other: dict[str, int] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)  # queue depths sampled each 0.5 s

    @property
    def goodput(self) -> float:
        """Successful requests completed per second of the phase (later ones not counted)."""
        return self.ok_in_window / self.seconds

    def quantile(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self, label: str) -> str:
        return (
            f"{label:>9} {self.rate:6.1f} req/s offered | goodput {self.goodput:6.2f}/s | "
            f"admitted p50 {self.quantile(self.ok, 0.5) * 1e3:6.0f} ms "
            f"p99 {self.quantile(self.ok, 0.99) * 1e3:6.0f} ms | shed {len(self.shed):5d} "
            f"(p99 {self.quantile(self.shed, 0.99) * 1e3:5.1f} ms, "
            f"max {max(self.shed, default=float('nan')) * 1e3:5.1f} ms) | other {self.other} | "
            f"peak {self.peak}"
        )


WATCHED = {
    "engine waiting": "vllm:num_requests_waiting",
    "engine running": "vllm:num_requests_running",
    "gateway in flight": "gateway_backend_in_flight",
}


async def sample(client: httpx.AsyncClient, urls: list[str], phase: Phase, stop) -> None:
    """Peak queue depths at the engine and the gateway: where waiting happens."""
    while not stop.is_set():
        for url in urls:
            try:
                text = (await client.get(f"{url}/metrics")).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                for label, metric in WATCHED.items():
                    if line.startswith(metric + "{"):
                        value = float(line.rsplit(" ", 1)[1])
                        phase.peak[label] = max(phase.peak.get(label, 0.0), value)
        await asyncio.sleep(0.5)


async def open_loop(
    client: httpx.AsyncClient, url: str, rate: float, seconds: float, watch: list[str] = ()
) -> Phase:
    async with _Sender() as sender:
        return await _open_loop(sender, client, url, rate, seconds, watch)


class _Sender:
    """POSTs with the gateway's lean keep-alive client; answers (status, body)."""

    async def __aenter__(self) -> _Sender:
        self.pool = UpstreamPool(max_connections=4096)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.pool.aclose()

    async def post(self, url: str, body: bytes = RAW) -> str:
        try:
            response = await self.pool.request("POST", url, body, JSON, 120.0)
            await response.read()
            return str(response.status)
        except UpstreamError as exc:
            return type(exc).__name__


async def _open_loop(sender, client, url: str, rate: float, seconds: float, watch) -> Phase:
    """Poisson arrivals at ``rate`` for ``seconds``; waits for every request to finish."""
    phase = Phase(rate, seconds)
    rng = random.Random(7)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(client, list(watch), phase, stop))

    async def one() -> None:
        started = time.perf_counter()
        status = await sender.post(f"{url}/v1/completions")
        elapsed = time.perf_counter() - started
        if status == "200":
            phase.ok.append(elapsed)
            phase.ok_in_window += time.perf_counter() - start <= seconds
        elif status == "429":
            phase.shed.append(elapsed)
        else:
            phase.other[status] = phase.other.get(status, 0) + 1

    tasks = []
    start = time.perf_counter()
    next_at = 0.0
    while next_at < seconds:
        delay = start + next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    stop.set()
    await sampler
    return phase


async def capacity(client, url: str, target_s: float, probe_s: float) -> tuple[float, list]:
    rates = [2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0]
    found, trials = 0.0, []
    for rate in rates:
        phase = await open_loop(client, url, rate, probe_s)
        trials.append(phase)
        print(phase.line("probe"), flush=True)
        good = not phase.shed and not phase.other and phase.quantile(phase.ok, 0.99) <= target_s
        if not good:
            break
        found = rate
    return found, trials


async def flood(client, gateway: str, engine: str) -> dict:
    huge = {**BODY, "prompt": "Q: " + "x" * 900_000}
    health: list[float] = []
    small: list[tuple[int, float]] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            started = time.perf_counter()
            answer = await client.get(f"{engine}/health")
            health.append(time.perf_counter() - started if answer.status_code == 200 else -1)
            await asyncio.sleep(0.05)

    async def small_requests() -> None:
        for _ in range(5):
            started = time.perf_counter()
            answer = await client.post(f"{gateway}/v1/completions", json=BODY)
            small.append((answer.status_code, time.perf_counter() - started))

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    flood_task = asyncio.gather(
        *(client.post(f"{gateway}/v1/completions", json=huge) for _ in range(30))
    )
    await asyncio.sleep(0.1)
    await small_requests()
    answers = await flood_task
    flood_s = time.perf_counter() - started
    done.set()
    await watcher
    return {
        "flood statuses": sorted({a.status_code for a in answers}),
        "flood all answered in s": round(flood_s, 2),
        "health probes": len(health),
        "health failed": sum(h < 0 for h in health),
        "health max ms": round(max(health) * 1e3, 1),
        "small requests (status, ms)": [(s, round(t * 1e3)) for s, t in small],
    }


async def poison(client, gateway: str, rounds: int = 10) -> dict:
    good_ok = good_total = bad_400 = 0
    for i in range(rounds):
        bodies = [{**BODY, "seed": 2**64}] + [{**BODY, "seed": i * 10 + k} for k in range(10)]
        answers = await asyncio.gather(
            *(client.post(f"{gateway}/v1/completions", json=b) for b in bodies)
        )
        bad_400 += answers[0].status_code == 400
        good_total += 10
        good_ok += sum(a.status_code == 200 for a in answers[1:])
    return {"rounds": rounds, "poison answered 400": bad_400, "good ok": f"{good_ok}/{good_total}"}


def engine_restarts(home: Path) -> int:
    stack = json.loads((home / "serving" / "stack.json").read_text())
    return sum(e["restarts"] for e in stack["engines"].values())


async def run(args, gateway: str, engine: str, home: Path) -> None:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        cap, _ = await capacity(client, gateway, args.p99_target_s, args.probe_s)
        if cap == 0:
            raise SystemExit("no rate met the p99 target; the machine is too busy")
        print(f"capacity: {cap:.1f} req/s (p99 <= {args.p99_target_s} s)", flush=True)
        phases = {}
        for factor in (1, 2, 5):
            watch = [gateway, engine]
            phases[factor] = await open_loop(client, gateway, factor * cap, args.phase_s, watch)
            print(phases[factor].line(f"{factor}x"), flush=True)
        ratio = phases[5].goodput / cap
        shed = [s for p in phases.values() for s in p.shed]
        print(f"goodput at 5x / capacity: {ratio:.2f} (target >= 0.90)")
        if shed:
            print(f"shed answered within 50 ms: {sum(s <= 0.05 for s in shed)}/{len(shed)}")
        print(f"engine restarts so far: {engine_restarts(home)}")
        print("huge-prompt flood:", json.dumps(await flood(client, gateway, engine)))
        print("poison mix:", json.dumps(await poison(client, gateway)))
        print(f"engine restarts at the end: {engine_restarts(home)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-s", type=float, default=60.0)
    parser.add_argument("--probe-s", type=float, default=10.0)
    parser.add_argument("--p99-target-s", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        model = build_tiny_model(Path(tmp) / "model", hidden=64, layers=2)
        env = {
            **os.environ,
            "MLOPS_HOME": str(home),
            "MLOPS_GATEWAY_ADMIN_TOKEN": TOKEN,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        up = subprocess.run(
            [sys.executable, "-m", "serving", "up", "--model", str(model)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if up.returncode != 0:
            raise SystemExit(up.stderr)
        stack = json.loads(up.stdout)
        (engine,) = stack["engines"].values()
        print(f"load average at start: {os.getloadavg()}", flush=True)
        try:
            asyncio.run(run(args, stack["gateway"]["url"], engine["url"], home))
        finally:
            print(f"load average at end: {os.getloadavg()}")
            subprocess.run(
                [sys.executable, "-m", "serving", "down"],
                cwd=REPO,
                env=env,
                capture_output=True,
                timeout=120,
            )


if __name__ == "__main__":
    main()
