"""Evaluation throughput: held-out tasks scored per second, batched vs one prompt at a time.

    python benchmarks/eval_throughput.py [--examples 200] [--train-steps 300]

Builds the reference model and a sample corpus in a temporary directory (offline), then
scores the same held-out sample twice: with same-length batching (the default,
``batch_size=32``) and with ``batch_size=1`` as the baseline, measured in the same run.
Both must give identical metrics; the figure is tasks per second and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import deltalake
import pyarrow as pa

from evaluation.heldout import load_heldout
from evaluation.metrics import MetricsConfig, evaluate_model
from evaluation.reference_model import ReferenceModelConfig, build_reference_model
from evaluation.suites import SuiteExample
from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        texts = [normalise_text(r["text"]) for r in generate_records(40 * args.examples, seed=7)]
        table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
        deltalake.write_deltalake(str(root / "corpus"), table)
        model = build_reference_model(
            root / "model", ReferenceModelConfig(train_steps=args.train_steps)
        )
        sample = load_heldout(root / "corpus", 0, args.examples)
        tasks = [  # the held-out tasks as a suite (exact match)
            SuiteExample("demo", f"{i:05d}", t.prompt, t.answer) for i, t in enumerate(sample.tasks)
        ]
        results = {}
        for name, cfg in (
            ("batched", MetricsConfig()),
            ("one-by-one", MetricsConfig(batch_size=1)),
        ):
            evaluate_model(model, sample, cfg, tasks)  # warm-up: first-call allocations and kernels
            started = time.perf_counter()
            metrics = evaluate_model(model, sample, cfg, tasks)
            results[name] = (time.perf_counter() - started, metrics)
    (fast, m_fast), (slow, m_slow) = results["batched"], results["one-by-one"]
    assert m_fast.exact_match == m_slow.exact_match, "batching changed exact match"
    tasks = m_fast.tasks
    print(f"tasks={tasks} exact_match={m_fast.exact_match:.4f} perplexity={m_fast.perplexity:.4f}")
    print(f"batched:    {fast:.2f} s  {tasks / fast:.1f} tasks/s")
    print(f"one-by-one: {slow:.2f} s  {tasks / slow:.1f} tasks/s (baseline)")
    print(f"speed-up vs baseline: {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
