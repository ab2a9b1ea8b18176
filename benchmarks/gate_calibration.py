"""Gate calibration: false rejects of equal challengers, rejections of clearly worse ones.

    python benchmarks/gate_calibration.py [--trials 20] [--worse 5] [--steps 300] \\
        [--worse-steps 20] [--records 6000] [--suite 300] [--trainer reference|torchrun]

On the demo's sample corpus and eval suite (written and ingested into a temporary lake), a
champion (seed 0), ``--trials`` equal challengers (the same recipe, seeds 1..N) and
``--worse`` clearly worse ones (``--worse-steps`` steps) are trained for real: by default in
process with ``evaluation.reference_model`` (a Llama trained with AdamW on the sample tasks;
all seeds share one corpus and tokenizer, only initialisation and batch order vary), or with
``--trainer torchrun`` by the training program itself (``python -m training``, one process,
its own tokenizer per run: slower). Every model is scored once on the same held-out texts and
suite examples, then the gate (``evaluation.gate.decide``, default ``GateConfig``) judges each
challenger against the champion on both bases: the task suite, and perplexity alone (as on a
corpus without suites). Printed: for equal challengers the share not passed (false-reject
rate; target at most 5%) and the verdict counts; for worse ones the share failed (target
100%); the mean effect and bound widths. Training dominates the run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from evaluation.gate import GateConfig, decide
from evaluation.heldout import load_heldout
from evaluation.metrics import MetricsConfig, ModelMetrics, evaluate_model
from evaluation.reference_model import ReferenceModelConfig, build_reference_model
from evaluation.suites import load_suites
from ingestion.config import IngestConfig
from ingestion.evals import ingest_suites
from ingestion.pipeline import ingest
from ingestion.sample import write_eval_suite, write_landing


def train(root: Path, name: str, steps: int, seed: int, trainer: str) -> Path:
    out = root / "runs" / name
    if trainer == "reference":
        cfg = ReferenceModelConfig(train_steps=steps, seed=seed, data_seed=0)
        return build_reference_model(out, cfg)
    cmd = [sys.executable, "-m", "training", "--data", str(root / "lake" / "corpus")]
    cmd += ["--output", str(out), "--max-steps", str(steps), "--seed", str(seed)]
    cmd += ["--checkpoint-every", str(steps)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=3600)
    return out / "model"


def judge(challengers: list[ModelMetrics], champion: ModelMetrics, plain: bool) -> Counter:
    cfg = GateConfig()
    if plain:  # the same models as on a corpus without suites: perplexity decides
        champion = dataclasses.replace(champion, exact_match=None, task_correct=())
    verdicts = Counter()
    for c in challengers:
        c = dataclasses.replace(c, exact_match=None, task_correct=()) if plain else c
        verdicts[decide(c, champion, cfg).verdict] += 1
    return verdicts


def effects(challengers: list[ModelMetrics], champion: ModelMetrics) -> str:
    tests = [decide(c, champion).comparison for c in challengers]
    mean = sum(t.loss for t in tests) / len(tests)
    width = sum(t.high - t.low for t in tests) / len(tests)
    worst = max(t.high for t in tests)
    return f"mean loss {mean:+.4f}, mean bound width {width:.4f}, largest upper bound {worst:+.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--worse", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--worse-steps", type=int, default=20)
    parser.add_argument("--trainer", choices=["reference", "torchrun"], default="reference")
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--suite", type=int, default=300)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_landing(root / "landing", args.records, seed=0)
        write_eval_suite(root / "landing", args.suite, seed=0)
        ingest(IngestConfig(landing_dir=root / "landing", lake_dir=root / "lake"))
        ingest_suites(root / "landing", root / "lake", "calibration")
        [suite] = load_suites(root / "lake" / "evals", args.suite)
        sample = load_heldout(root / "lake" / "corpus", None, 200)

        champion: ModelMetrics | None = None

        def score(name: str, steps: int, seed: int) -> ModelMetrics:
            model = train(root, name, steps, seed, args.trainer)
            m = evaluate_model(model, sample, MetricsConfig(), suite.examples)
            verdicts = ""
            if champion is not None:  # progress: this challenger's verdicts on both bases
                on_suite, on_ppl = (judge([m], champion, plain) for plain in (False, True))
                verdicts = f" -> suite {next(iter(on_suite))}, perplexity {next(iter(on_ppl))}"
            print(
                f"  {name}: exact_match {m.exact_match:.3f} perplexity {m.perplexity:.4f}"
                + verdicts,
                flush=True,
            )
            return m

        champion = score("champion", args.steps, 0)
        equal = [score(f"equal-{s}", args.steps, s) for s in range(1, args.trials + 1)]
        worse = [score(f"worse-{s}", args.worse_steps, s) for s in range(1, args.worse + 1)]
    for plain in (False, True):
        basis = "perplexity (no suite)" if plain else f"task suite ({len(suite.examples)} ex.)"
        eq, bad = judge(equal, champion, plain), judge(worse, champion, plain)
        rejects = args.trials - eq["passed"]
        print(f"basis {basis}:")
        print(
            f"  equal challengers: {rejects}/{args.trials} not passed "
            f"(false-reject rate {rejects / args.trials:.1%}, target <= 5%); verdicts {dict(eq)}"
        )
        print(
            f"  worse challengers: {bad['failed']}/{args.worse} failed "
            f"({bad['failed'] / max(1, args.worse):.0%}, target 100%); verdicts {dict(bad)}"
        )
        if not plain:
            print(f"  equal: {effects(equal, champion)}")
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
