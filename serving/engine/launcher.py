"""Start an inference engine as a process, whichever kind the config names.

``engine: embedded`` runs ``python -m serving.engine`` (CPU, this package); ``engine: vllm``
runs ``vllm serve DIR --served-model-name NAME --port P`` on a GPU host. Both speak the same
OpenAI API and answer ``/health``, so everything above this module (supervisor, canary,
gateway) treats them alike. Choosing vLLM where it is not installed fails at once with the
install command, rather than with a process that dies in the background.

An engine gets only the environment it needs (:func:`engine_environment`: paths, locale,
thread and accelerator settings, Hugging Face and vLLM options, log format), never the
partner API keys or the gateway admin token the processes above it hold.

An engine serving a model fetched from the registry logs that version on every line: the
launcher finds it from the directory layout and passes it as ``MLOPS_MODEL_VERSION``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from observability.logs import FORMAT_ENV, MODEL_VERSION_ENV, RUN_ID_ENV

EngineKind = Literal["embedded", "vllm"]


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
    vllm = shutil.which("vllm")
    if vllm is None or importlib.util.find_spec("vllm") is None:
        raise EngineUnavailable(
            "engine 'vllm' is configured but vLLM is not installed here; on a GPU host run "
            "`pip install 'sovereign-mlops[vllm]'`, or set engine: embedded to serve on CPU"
        )
    return [vllm, "serve", str(spec.model_dir), *common]


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
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
