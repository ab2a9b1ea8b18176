"""Training throughput and checkpoint stall, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/train_throughput.py [--steps 100] [--repeats 3] [--parts throughput,stall]

1. tokens/s of ``torchrun -m training`` vs a bare PyTorch DDP loop
   (``train_bare_loop.py``: same model, data blocks, micro-batch, optimiser) at world
   size 1 and 2; the best of ``--repeats`` alternating runs each, since the host is shared.
   Target: ratio >= 0.95.
2. Time the training loop is blocked per checkpoint, synchronous vs asynchronous writes,
   as a share of the mean step time (a ~4.5M-parameter model, so a checkpoint is ~55 MB).

Everything runs on this machine's CPU (gloo); GPU figures (NCCL, bf16, MFU) need a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import deltalake
import pyarrow as pa

from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

CKPT_MODEL = {
    "model": {
        "hidden_size": 256,
        "num_layers": 4,
        "num_heads": 4,
        "num_kv_heads": 4,
        "intermediate_size": 1024,
        "vocab_size": 512,
    },
    "data": {"seq_len": 64, "batch_size": 8},
    "log_every": 10,
}


def env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def make_corpus(path: Path, count: int) -> None:
    texts = list(dict.fromkeys(normalise_text(r["text"]) for r in generate_records(count, seed=0)))
    deltalake.write_deltalake(
        str(path), pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
    )


def torchrun(nproc: int, args: list[str]) -> None:
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", str(nproc), *args]
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-6000:]}")


def ours(corpus: Path, out: Path, nproc: int, steps: int, every: int, config: Path | None) -> dict:
    args = [
        "-m",
        "training",
        "--data",
        str(corpus),
        "--output",
        str(out),
        "--max-steps",
        str(steps),
        "--checkpoint-every",
        str(every),
        "--seed",
        "0",
    ]
    torchrun(nproc, args + (["--config", str(config)] if config else []))
    return json.loads((out / "model" / "training_summary.json").read_text())


def bare(corpus: Path, run: Path, nproc: int, steps: int, result: Path) -> float:
    torchrun(
        nproc,
        [
            str(REPO / "benchmarks" / "train_bare_loop.py"),
            "--data",
            str(corpus),
            "--run-dir",
            str(run),
            "--steps",
            str(steps),
            "--result",
            str(result),
        ],
    )
    return json.loads(result.read_text())["tokens_per_s"]


def throughput(tmp: Path, corpus: Path, steps: int, repeats: int) -> None:
    print(f"== throughput: tokens/s, tiny default model, {steps} steps, best of {repeats}")
    print(f"{'world':>5} {'trainer':>10} {'bare loop':>10} {'ratio':>6}")
    for nproc in (1, 2):
        mine, base = [], []
        for r in range(repeats):
            out = tmp / f"tp-{nproc}-{r}"
            mine.append(ours(corpus, out, nproc, steps, steps, None)["tokens_per_s"])
            base.append(bare(corpus, out, nproc, steps, tmp / f"bare-{nproc}-{r}.json"))
        best_mine, best_base = max(mine), max(base)
        print(f"{nproc:>5} {best_mine:>10,.0f} {best_base:>10,.0f} {best_mine / best_base:>6.3f}")


def stall(tmp: Path, corpus: Path) -> None:
    print("== checkpoint stall: loop blocked per checkpoint, 2 processes, every 5 of 30 steps")
    rows = {}
    for mode in ("sync", "async"):
        cfg = json.loads(json.dumps(CKPT_MODEL))
        cfg["checkpoint"] = {"async_write": mode == "async", "keep": 2}
        path = tmp / f"ckpt-{mode}.json"
        path.write_text(json.dumps(cfg))
        summary = ours(corpus, tmp / f"ckpt-{mode}", 2, 30, 5, path)
        size = (
            sum(
                f.stat().st_size
                for f in (tmp / f"ckpt-{mode}" / "checkpoints").rglob("*")
                if f.is_file()
            )
            / 2
        )
        blocked = summary["checkpoint_blocked_s"]
        rows[mode] = (statistics.mean(blocked), summary["step_time_s"], size)
    print(f"{'mode':>5} {'blocked ms':>10} {'step ms':>8} {'share':>6}")
    for mode, (b, s, _) in rows.items():
        print(f"{mode:>5} {1000 * b:>10.1f} {1000 * s:>8.1f} {b / s:>6.2f}")
    print(
        f"checkpoint size {rows['sync'][2] / 1e6:.1f} MB; "
        f"sync/async blocked-time ratio {rows['sync'][0] / rows['async'][0]:.1f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="throughput,stall", help="comma-separated parts to run")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_corpus(tmp / "corpus", 4000)
        if "throughput" in parts:
            throughput(tmp, tmp / "corpus", args.steps, args.repeats)
        if "stall" in parts:
            stall(tmp, tmp / "corpus")


if __name__ == "__main__":
    main()
