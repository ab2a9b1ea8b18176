"""Shared fixtures for the training tests: a small corpus table, a tiny config, a torchrun runner.

Runs are real: ``torchrun -m training`` in a subprocess with gloo on CPU, offline, with
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` as the launchers set it. Sizes are picked so a
2-process run of 60 steps takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import deltalake
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

TINY = {
    "model": {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 1,
        "num_kv_heads": 1,
        "intermediate_size": 64,
        "vocab_size": 320,
        "max_position_embeddings": 64,
        # Dropout on, so a resume that loses an RNG state cannot match bitwise.
        "attention_dropout": 0.1,
    },
    "optim": {"lr": 0.005, "warmup_steps": 5},
    "data": {"seq_len": 32, "batch_size": 8, "tokenizer_sample": 1000},
    "checkpoint": {"keep": 3},
    "log_every": 5,
}


def write_corpus(path: Path, texts: list[str]) -> None:
    texts = list(dict.fromkeys(normalise_text(t) for t in texts))
    table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
    deltalake.write_deltalake(str(path), table, mode="append")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lake") / "corpus"
    write_corpus(path, [r["text"] for r in generate_records(1200, seed=0)])
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
    )
    e.pop("MLFLOW_TRACKING_URI", None)
    e.pop("DAGSTER_PIPES_CONTEXT", None)
    e.pop("MLOPS_LOG_FORMAT", None)  # tests read the rank logs' text lines
    return e


def command(
    corpus: Path,
    output: Path,
    config: Path | None,
    *,
    nproc: int = 2,
    steps: int = 60,
    every: int = 10,
    seed: int = 0,
    restarts: int = 0,
    launcher: list[str] | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    cmd = [
        TORCHRUN,
        *(launcher or ["--standalone"]),
        "--nproc-per-node",
        str(nproc),
        "--max-restarts",
        str(restarts),
        "-m",
        "training",
        "--data",
        str(corpus),
        "--output",
        str(output),
        "--max-steps",
        str(steps),
        "--checkpoint-every",
        str(every),
        "--seed",
        str(seed),
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd + (extra or [])


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    output: Path

    def summary(self) -> dict:
        return json.loads((self.output / "model" / "training_summary.json").read_text())

    def log(self, rank: int = 0) -> str:
        return (self.output / "logs" / f"rank{rank}.log").read_text()


def run(cmd: list[str], output: Path, timeout: float = 240) -> Result:
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr, output)


def run_and_kill(
    cmd: list[str], output: Path, rank: int, after_step: int, timeout: float = 240
) -> tuple[Result, int]:
    """Start a run; once checkpoint ``after_step`` exists, SIGKILL rank ``rank``; wait for the end."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    marker = output / "checkpoints" / f"step_{after_step:08d}"
    killed = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if marker.is_dir():
                killed = worker_pid(output, rank)
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.01)
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Result(proc.returncode, out, err, output), killed


def worker_pid(output: Path, rank: int, restart: int = 0) -> int:
    text = (output / "logs" / f"rank{rank}.log").read_text()
    match = re.search(rf"rank{rank} restart{restart} pid(\d+)", text)
    assert match, f"no pid line for rank {rank} in its log:\n{text}"
    return int(match.group(1))


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "model" / "model.safetensors"))


def assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"tensors differ after resume: {different}"


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_config: Path) -> Result:
    """An uninterrupted 2-process run: 60 steps, checkpoints every 10, seed 0."""
    output = tmp_path_factory.mktemp("baseline") / "run"
    result = run(command(corpus, output, tiny_config), output)
    assert result.rc == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="session")
def tr() -> SimpleNamespace:
    """The helpers above, for test modules (importlib mode cannot import a conftest)."""
    return SimpleNamespace(
        command=command,
        run=run,
        run_and_kill=run_and_kill,
        worker_pid=worker_pid,
        weights=weights,
        assert_bitwise_equal=assert_bitwise_equal,
        write_corpus=write_corpus,
        env=env,
        TINY=TINY,
    )
