"""Embedded engine throughput: 16 concurrent clients vs the same requests one at a time.

``python benchmarks/engine_batching.py`` builds a small random ``LlamaForCausalLM`` (no
download), starts ``python -m serving.engine`` on loopback and sends identical completion
requests (greedy, fixed ``max_tokens``, EOS unreachable so every request generates the same
number of tokens): first sequentially (the baseline), then from 16 concurrent clients.
Prints generated tokens/s for both and the ratio; the target is >= 3x. The engine runs
with ``OMP_NUM_THREADS=1`` so the figure does not depend on how busy the other cores are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_tiny_model(out: Path, hidden: int = 128, layers: int = 4, seed: int = 0) -> Path:
    """A random-weight Llama + byte-level BPE trained on sample-corpus lines, saved to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    from ingestion.sample import generate_records

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([r["text"] for r in generate_records(400, seed=1)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # make EOS unreachable so every request runs to max_tokens
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
        model.lm_head.weight[tokenizer.eos_token_id] -= 100.0
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy")


async def drive(url: str, concurrency: int, total: int, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": "bench",
        "prompt": "Q: what comes after 41? A:",
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            queue.get_nowait()
            r = await client.post(f"{url}/v1/completions", json=body)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=120) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        engine = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving.engine",
                "--model",
                str(model),
                "--served-model-name",
                "bench",
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(url)
            asyncio.run(drive(url, 4, 8, args.max_tokens))  # warm-up
            seq_s, seq_tokens = asyncio.run(drive(url, 1, args.requests // 2, args.max_tokens))
            con_s, con_tokens = asyncio.run(
                drive(url, args.concurrency, args.requests, args.max_tokens)
            )
        finally:
            engine.terminate()
            engine.wait(10)
    sequential, concurrent = seq_tokens / seq_s, con_tokens / con_s
    print(f"one at a time : {sequential:8.1f} generated tokens/s ({args.requests // 2} requests)")
    print(
        f"{args.concurrency} concurrent : {concurrent:8.1f} generated tokens/s "
        f"({args.requests} requests)"
    )
    print(f"ratio         : {concurrent / sequential:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
