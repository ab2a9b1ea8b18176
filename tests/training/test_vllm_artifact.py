"""Contract: the model artifact of every preset loads and serves in real vLLM (its CPU build,
``make vllm``): ``export_model`` of a preset-shaped model (random weights, a small vocabulary)
is started with the launcher's vLLM command, answers a completion, and answers a chat
request with the chat template the directory ships (vLLM refuses chat without one).

The shapes are what matters to vLLM (head dimension, heads, layers, context); the weights
and vocabulary are kept small so the artifact is quick to write and to load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
from pathlib import Path

import httpx
import pytest

from ingestion.sample import generate_records
from serving.engine.launcher import EngineSpec, kill_group, start_engine, wait_healthy
from training.config import PRESETS
from training.model import build_model, export_model
from training.tokenizer import train_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a vLLM start takes minutes here


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_artifact_serves_in_vllm(preset, tmp_path):
    config = dataclasses.replace(PRESETS[preset], vocab_size=320)
    texts = [r["text"] for r in generate_records(300, seed=1)]
    tokenizer = train_tokenizer(texts, config.vocab_size, seed=0, sample=300)
    model_dir = tmp_path / "model"
    export_model(build_model(config, len(tokenizer), seed=0), tokenizer, {}, model_dir)
    assert (model_dir / "chat_template.jinja").is_file()

    spec = EngineSpec(model_dir, "sovereign-lm", port=_free_port(), engine="vllm")
    log = tmp_path / "vllm.log"
    process = start_engine(spec, log)
    try:
        try:
            wait_healthy(spec.url, 900, process)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{_tail(log)}") from None
        served = httpx.get(f"{spec.url}/v1/models", timeout=30).json()["data"][0]
        assert (
            served["id"] == "sovereign-lm"
            and served["max_model_len"] == config.max_position_embeddings
        )
        body = {"model": "sovereign-lm", "max_tokens": 4, "temperature": 0}
        done = httpx.post(
            f"{spec.url}/v1/completions", json={**body, "prompt": "Q: 1 A:"}, timeout=120
        )
        assert done.status_code == 200, done.text
        assert done.json()["usage"]["completion_tokens"] >= 1
        chat = httpx.post(
            f"{spec.url}/v1/chat/completions",
            json={**body, "messages": [{"role": "user", "content": "hello"}]},
            timeout=120,
        )
        assert chat.status_code == 200, chat.text
        # BOS + "user: hello\nassistant:" tokenized: the directory's template was applied
        expected = len(tokenizer("user: hello\nassistant:")["input_ids"])
        assert chat.json()["usage"]["prompt_tokens"] == expected
        assert process.poll() is None, f"vLLM exited after answering\n{_tail(log)}"
    finally:
        kill_group(process)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"
