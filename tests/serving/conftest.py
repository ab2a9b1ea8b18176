"""Fixtures for serving tests: tiny local models and real processes on loopback.

Models are built here, never downloaded: a byte-level BPE tokenizer trained on sample-corpus
lines and a 2-layer ``LlamaForCausalLM``. ``good_model_dir`` is that model trained in-process
until it answers the probe tasks exactly (it memorises them: the probes measure "does the
served model behave like the one we trained", not generalisation). ``random_model_dir`` has
random weights and answers nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records, parse_task
from ingestion.split import is_train

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token"
PROBE_COUNT = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build_tokenizer(out: Path, lines: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def _build_model(out: Path, tokenizer, seed: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def _train(model, tokenizer, texts: list[str], steps: int = 300) -> None:
    import torch

    # one thread: on a shared CPU, intra-op threads for a model this small only contend
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(model, tokenizer, texts, steps)
    finally:
        torch.set_num_threads(threads)


def _fit(model, tokenizer, texts: list[str], steps: int) -> None:
    import torch

    batch = tokenizer([t + "<eos>" for t in texts], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.02:
            break
    model.eval()


@pytest.fixture(scope="session")
def probe_tasks():
    """Held-out sample tasks: (prompt, expected answer)."""
    tasks = []
    for record in generate_records(400, seed=7):
        text = normalise_text(record["text"])
        if not is_train(record_id(text)):
            tasks.append(parse_task(text))
        if len(tasks) == PROBE_COUNT:
            break
    return [(t.prompt, t.answer) for t in tasks]


@pytest.fixture(scope="session")
def tokenizer_lines() -> list[str]:
    return [r["text"] for r in generate_records(400, seed=1)]


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory, tokenizer_lines) -> Path:
    out = tmp_path_factory.mktemp("random-model")
    tokenizer = _build_tokenizer(out, tokenizer_lines)
    _build_model(out, tokenizer, seed=1).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def good_model_dir(tmp_path_factory, tokenizer_lines, probe_tasks) -> Path:
    out = tmp_path_factory.mktemp("good-model")
    tokenizer = _build_tokenizer(out, tokenizer_lines)
    model = _build_model(out, tokenizer, seed=2)
    _train(model, tokenizer, [f"{p} {a}" for p, a in probe_tasks])
    model.save_pretrained(out)
    return out


def wait_http(url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout_s}s")


def child_env(**extra: str) -> dict[str, str]:
    # OMP_NUM_THREADS=1: tiny models gain nothing from intra-op threads on a shared CPU
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


class Proc:
    """A server process started as users start it, killed on teardown."""

    def __init__(self, args: list[str], url: str, log: Path, env: dict[str, str]):
        self.args, self.url, self.log, self.env = args, url, log, env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> Proc:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.args],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_http(f"{self.url}/health", timeout_s, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(self.log.read_text()[-3000:]) from None
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def spawn(tmp_path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def _spawn(
        kind: str,
        *args: str,
        port: int | None = None,
        env: dict | None = None,
        timeout_s: float = 120.0,
    ) -> Proc:
        port = port or free_port()
        module = {"engine": "serving.engine", "gateway": "serving.gateway"}[kind]
        argv = ["-m", module, *args, "--host", "127.0.0.1", "--port", str(port)]
        proc = Proc(
            argv,
            f"http://127.0.0.1:{port}",
            tmp_path / f"{kind}-{port}.log",
            child_env(**(env or {})),
        )
        started.append(proc)
        return proc.start(timeout_s)

    yield _spawn
    for proc in started:
        proc.stop()


class ThreadServer:
    """A uvicorn server for a small in-test ASGI app, on loopback in a background thread."""

    def __init__(self, app, port: int | None = None) -> None:
        import threading

        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("in-test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def helpers():
    """Test utilities as a fixture (test modules cannot import conftest under importlib mode)."""
    import types

    return types.SimpleNamespace(
        free_port=free_port,
        Proc=Proc,
        child_env=child_env,
        wait_http=wait_http,
        ThreadServer=ThreadServer,
        admin_token=ADMIN_TOKEN,
        serving_cli=serving_cli,
        HAProxy=HAProxy,
    )


def serving_cli(home: Path, *args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    env = child_env(MLOPS_HOME=str(home), MLOPS_GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN)
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory):
    """``python -m serving up`` in a fresh MLOPS_HOME; ``down`` on teardown."""
    homes: list[Path] = []

    def _up(model_dir: Path) -> tuple[Path, dict]:
        import json

        home = tmp_path_factory.mktemp("mlops-home")
        homes.append(home)
        done = serving_cli(home, "up", "--model", str(model_dir))
        assert done.returncode == 0, done.stderr + (home / "serving/logs").as_posix()
        return home, json.loads(done.stdout)

    yield _up
    for home in homes:
        serving_cli(home, "down", timeout_s=60)


@pytest.fixture(scope="session")
def challenger_copy(tmp_path_factory, good_model_dir) -> Path:
    """The good model under a second directory: a distinct model version, same behaviour."""
    import shutil

    out = tmp_path_factory.mktemp("challenger") / "model"
    shutil.copytree(good_model_dir, out)
    return out


# -- vLLM: a model trained by our trainer, served by real vLLM processes --------------------
# vLLM takes one to three minutes to start here, so one stack serves every vLLM test of the
# session (tests/serving/test_vllm_*.py), in file order.


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory) -> Path:
    """The ``tiny`` preset trained by ``torchrun -m training`` on the sample corpus."""
    import deltalake
    import pyarrow as pa

    root = tmp_path_factory.mktemp("trained")
    texts = list(dict.fromkeys(normalise_text(r["text"]) for r in generate_records(1500, seed=0)))
    table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
    deltalake.write_deltalake(str(root / "corpus"), table)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "1", "-m", "training"]
        + ["--data", str(root / "corpus"), "--output", str(root / "run")]
        + ["--max-steps", "200", "--checkpoint-every", "200", "--seed", "0"],
        cwd=REPO,
        env=child_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run" / "model"


@pytest.fixture(scope="session")
def vllm_stack(tmp_path_factory, trained_model_dir):
    """``python -m serving up --engine vllm`` for the trained model; ``down`` at the end."""
    import json
    import types

    from serving.gateway.client import GatewayAdmin
    from serving.stack import SupervisedFleet
    from serving.supervisor import StackPaths

    home = tmp_path_factory.mktemp("vllm-home")
    started = time.monotonic()
    done = serving_cli(
        home, "up", "--model", str(trained_model_dir), "--engine", "vllm", timeout_s=900
    )
    assert done.returncode == 0, done.stderr + _log_tail(home / "serving" / "logs")
    info = json.loads(done.stdout)
    yield types.SimpleNamespace(
        home=home,
        info=info,
        gateway=info["gateway"]["url"],
        admin=GatewayAdmin(info["gateway"]["url"], ADMIN_TOKEN),
        fleet=SupervisedFleet(StackPaths.under(home), engine="vllm"),
        up_s=time.monotonic() - started,
    )
    serving_cli(home, "down", timeout_s=120)


def _log_tail(logs: Path, chars: int = 3000) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-chars:]}" for p in sorted(logs.glob("*.log")))


_SUBJECTS = ["the river", "a small boat", "the old mill", "my neighbour", "the night train"]
_VERBS = ["runs past", "waits near", "turns toward", "looks over", "drifts along"]
_OBJECTS = ["the quiet town", "a stone bridge", "the green hills", "an empty road", "the harbour"]


def plain_sentences(count: int, seed: int) -> list[str]:
    """Ordinary prose (no ``Q: ... A:`` tasks): a plain-text corpus's records."""
    import random

    rng = random.Random(seed)
    return [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
        f"at {rng.randrange(1, 12)} o'clock."
        for _ in range(count)
    ]


@pytest.fixture(scope="session")
def plain_texts() -> tuple[list[str], list[str]]:
    """(train, held-out) sentences of one plain-text corpus, split by the corpus's own rule."""
    train, heldout = [], []
    for text in dict.fromkeys(plain_sentences(400, seed=3)):
        (train if is_train(record_id(normalise_text(text))) else heldout).append(text)
    return train[:60], heldout[:12]


@pytest.fixture(scope="session")
def plain_model_dirs(tmp_path_factory, plain_texts) -> tuple[Path, Path]:
    """(trained, random) models of one architecture and tokenizer on a plain-text corpus."""
    train, _ = plain_texts
    trained = tmp_path_factory.mktemp("plain-trained")
    tokenizer = _build_tokenizer(trained, train)
    model = _build_model(trained, tokenizer, seed=4)
    _train(model, tokenizer, train, steps=150)
    model.save_pretrained(trained)
    random_dir = tmp_path_factory.mktemp("plain-random")
    tokenizer.save_pretrained(random_dir)
    _build_model(random_dir, tokenizer, seed=5).save_pretrained(random_dir)
    return trained, random_dir


# -- a gateway fleet: a private PostgreSQL server and HAProxy in front of replicas ------------


class PrivatePostgres:
    """A PostgreSQL server of its own (initdb in a temp dir, run as ``postgres``), so a test
    can stop and restart it without touching the machine's shared server."""

    def __init__(self, port: int) -> None:
        import glob
        import tempfile

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        assert bins, "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
        self.bin = Path(bins[-1]).parent
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
        self.data = self.root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _as_postgres(self, *args: str, timeout_s: float = 60) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        assert done.returncode == 0, f"{args[0]} failed: {done.stderr[-2000:]}"

    def init(self) -> PrivatePostgres:
        import shutil

        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )
        return self.start()

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "-l",
            str(self.root / "server.log"),
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        import shutil

        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(free_port()).init()
    yield server
    server.destroy()


class HAProxy:
    """Debian's haproxy in front of gateway replicas: health checks on ``/health``, retries
    of refused connections and empty answers on another replica."""

    def __init__(self, servers: list[str], root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "haproxy.cfg"
        lines = "\n".join(
            f"    server {name} {address} check inter 200ms fall 2 rise 2"
            for name, address in zip(("g0", "g1", "g2", "g3", "g4"), servers, strict=False)
        )
        self.config.write_text(
            f"""global
    maxconn 2000
    log stdout format raw local0 info
defaults
    mode http
    log global
    option httplog
    # a fresh server connection per request: a request sent on a reused idle connection to
    # a replica that just died is answered by closing the client's connection, not retried
    option http-server-close
    # the whole body read before a server is picked, so the request can be replayed
    option http-buffer-request
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
{lines}
"""
        )
        self.log = root / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> HAProxy:
        import shutil

        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert Path(binary).exists(), "haproxy not installed: run scripts/ensure_haproxy.sh"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-2000:]
                assert time.monotonic() < deadline, "haproxy did not start listening"
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
