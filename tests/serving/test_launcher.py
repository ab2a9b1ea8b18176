"""Contract: engines are chosen by config (``embedded`` | ``vllm``). vLLM runs under its own
interpreter (``MLOPS_VLLM_PYTHON``, else the ``make vllm`` venv) as its OpenAI server module
with float32 weights and the model's context length, and gets our chat template only for a
directory that ships none. Choosing vLLM where it is not installed fails at once with the
command to run, from the API and from ``serving up``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.engine import launcher
from serving.engine.chat_template import CHAT_TEMPLATE
from serving.engine.launcher import EngineSpec, EngineUnavailable, engine_command

REPO = Path(__file__).resolve().parents[2]


def test_embedded_command_runs_this_package():
    spec = EngineSpec(Path("/models/m"), "sovereign-lm", port=8001)
    assert engine_command(spec) == [
        sys.executable,
        "-m",
        "serving.engine",
        "--model",
        "/models/m",
        "--served-model-name",
        "sovereign-lm",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
    ]
    assert spec.url == "http://127.0.0.1:8001"


def test_bad_engine_kind_and_port_are_refused():
    with pytest.raises(ValueError, match="engine must be"):
        EngineSpec(Path("m"), "n", port=1, engine="tgi")
    with pytest.raises(ValueError, match="port"):
        EngineSpec(Path("m"), "n", port=0)


@pytest.fixture
def vllm_python(monkeypatch) -> str:
    """The interpreter ``make vllm`` installed (``make test`` builds it first)."""
    python = launcher.VLLM_VENV / "bin" / "python"
    assert python.is_file(), f"{python} missing: run `make vllm`"
    monkeypatch.delenv(launcher.VLLM_PYTHON_ENV, raising=False)
    return str(python)


def test_vllm_command_runs_the_server_module_of_the_vllm_venv(vllm_python, random_model_dir):
    command = engine_command(EngineSpec(random_model_dir, "sovereign-lm", port=8002, engine="vllm"))
    assert command[:3] == [vllm_python, "-m", "vllm.entrypoints.openai.api_server"]
    args = dict(zip(command[3::2], command[4::2], strict=False))
    assert args["--model"] == str(random_model_dir)
    assert args["--dtype"] == "float32"
    assert args["--max-model-len"] == "128"  # the fixture model's max_position_embeddings
    assert args["--served-model-name"] == "sovereign-lm" and args["--port"] == "8002"
    # the fixture's tokenizer was saved without a chat template: vLLM gets ours
    assert args["--chat-template"] == CHAT_TEMPLATE


def test_a_directory_with_its_own_chat_template_keeps_it(vllm_python, random_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(random_model_dir, model)
    (model / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    command = engine_command(EngineSpec(model, "sovereign-lm", port=8002, engine="vllm"))
    assert "--chat-template" not in command


def test_vllm_python_env_names_the_interpreter(monkeypatch, vllm_python):
    monkeypatch.setenv(launcher.VLLM_PYTHON_ENV, vllm_python)
    assert launcher.vllm_python() == vllm_python


def test_vllm_python_env_without_vllm_names_the_install_command(monkeypatch):
    monkeypatch.setenv(launcher.VLLM_PYTHON_ENV, sys.executable)  # the project's: no vLLM
    with pytest.raises(EngineUnavailable) as err:
        engine_command(EngineSpec(Path("m"), "n", port=8001, engine="vllm"))
    assert f"MLOPS_VLLM_PYTHON={sys.executable} is not a Python with vLLM" in str(err.value)
    assert "`make vllm`" in str(err.value)


def test_no_vllm_anywhere_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.delenv(launcher.VLLM_PYTHON_ENV, raising=False)
    monkeypatch.setattr(launcher, "VLLM_VENV", tmp_path / "no-venv")
    with pytest.raises(EngineUnavailable) as err:
        launcher.vllm_python()
    assert "`make vllm`" in str(err.value)
    assert "pip install 'sovereign-mlops[vllm]'" in str(err.value)


def test_serving_up_with_vllm_missing_fails_at_once(tmp_path, random_model_dir, helpers):
    env = helpers.child_env(
        MLOPS_HOME=str(tmp_path),
        MLOPS_GATEWAY_ADMIN_TOKEN=helpers.admin_token,
        MLOPS_VLLM_PYTHON=str(tmp_path / "missing" / "python"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "serving", "up", "--model", str(random_model_dir)]
        + ["--engine", "vllm"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "is not a Python with vLLM installed" in done.stderr and "`make vllm`" in done.stderr
    assert not (tmp_path / "serving" / "supervisor.pid").exists()
