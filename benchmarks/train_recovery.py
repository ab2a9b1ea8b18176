"""Recovery time: from a worker's SIGKILL to the first completed step after torchrun's restart.

    .venv/bin/python benchmarks/train_recovery.py [--runs 3]

Each run starts ``torchrun --nproc-per-node 2 --max-restarts 1 -m training`` (tiny default
model), waits for the step-20 checkpoint, SIGKILLs rank 1 and reads, from rank 0's log,
when the restarted group finished its first step. The baseline, measured in the same
runs, is the cold start: from launching torchrun to the first completed step. Printed:
the median of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from train_throughput import REPO, TORCHRUN, env, make_corpus

FIRST_STEP = re.compile(r"first step of restart (\d+) done: step (\d+) at ([0-9.]+)")


def one_run(corpus: Path, out: Path) -> tuple[float, float]:
    cmd = [
        TORCHRUN,
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "-m",
        "training",
        "--data",
        str(corpus),
        "--output",
        str(out),
        "--max-steps",
        "300",
        "--checkpoint-every",
        "20",
        "--seed",
        "0",
    ]
    launched = time.time()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    marker = out / "checkpoints" / "step_00000020"
    while not marker.is_dir():
        if proc.poll() is not None:
            raise SystemExit(
                f"run ended before the first checkpoint:\n{proc.stderr.read()[-3000:]}"
            )
        time.sleep(0.005)
    log1 = (out / "logs" / "rank1.log").read_text()
    pid = int(re.search(r"rank1 restart0 pid(\d+)", log1).group(1))
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"run failed after the kill:\n{err[-3000:]}")
    firsts = {
        int(m.group(1)): float(m.group(3))
        for m in FIRST_STEP.finditer((out / "logs" / "rank0.log").read_text())
    }
    return firsts[0] - launched, firsts[1] - killed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    cold, recovery = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_corpus(tmp / "corpus", 4000)
        for i in range(args.runs):
            c, r = one_run(tmp / "corpus", tmp / f"run{i}")
            cold.append(c)
            recovery.append(r)
            print(f"run {i}: cold start {c:.2f} s, kill -> first step after restart {r:.2f} s")
    mc, mr = statistics.median(cold), statistics.median(recovery)
    print(f"median recovery {mr:.2f} s; median cold start {mc:.2f} s; ratio {mr / mc:.2f}")


if __name__ == "__main__":
    main()
