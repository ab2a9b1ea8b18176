"""Demo accuracy: how well the demo's first champion answers its own eval suite.

    python benchmarks/demo_accuracy.py [--steps 1500] [--config FILE] [--nproc 2]

Writes the demo's sample corpus (20,000 generated records, seed 0) and its eval suite (300
tasks) into a temporary landing zone, ingests both as ``make demo`` does, trains with
``torchrun --nproc-per-node N -m training`` (the demo recipe: the tiny preset unless
``--config`` names another) and scores the model on the suite with the evaluation code the
gate uses. Prints the training wall time, the suite accuracy overall and per task family,
and the held-out perplexity.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from evaluation.heldout import load_heldout
from evaluation.metrics import MetricsConfig, evaluate_model
from evaluation.suites import load_suites
from ingestion.config import IngestConfig
from ingestion.evals import ingest_suites
from ingestion.pipeline import ingest
from ingestion.sample import write_eval_suite, write_landing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--config", default=None)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_landing(root / "landing", 20_000, seed=0)
        write_eval_suite(root / "landing", 300, seed=0)
        ingest(IngestConfig(landing_dir=root / "landing", lake_dir=root / "lake"))
        ingest_suites(root / "landing", root / "lake", "demo-accuracy")
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--standalone", "--nproc-per-node", str(args.nproc), "-m", "training"]
        cmd += ["--data", str(root / "lake" / "corpus"), "--output", str(root / "run")]
        cmd += ["--max-steps", str(args.steps), "--checkpoint-every", str(args.steps)]
        cmd += ["--seed", "0"] + (["--config", args.config] if args.config else [])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=3600)
        train_s = time.perf_counter() - started
        [suite] = load_suites(root / "lake" / "evals", 1000)
        sample = load_heldout(root / "lake" / "corpus", None, 200)
        m = evaluate_model(root / "run" / "model", sample, MetricsConfig(), suite.examples)
    families: dict[str, list[int]] = defaultdict(list)
    for example, ok in zip(suite.examples, m.task_correct, strict=True):
        families[example.prompt.split()[1]].append(ok)
    per_family = ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(families.items()))
    print(f"steps {args.steps}, nproc {args.nproc}: training {train_s:.0f} s")
    print(f"suite exact match {m.exact_match:.3f} on {m.tasks} tasks ({per_family})")
    print(f"held-out perplexity {m.perplexity:.3f}; evaluation {m.seconds:.0f} s")


if __name__ == "__main__":
    main()
