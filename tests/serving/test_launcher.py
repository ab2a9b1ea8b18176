"""Contract: engines are chosen by config (``embedded`` | ``vllm``); choosing vLLM where it is
not installed fails at once with the install command, from the API and from ``serving up``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from serving.engine.launcher import EngineSpec, EngineUnavailable, engine_command

needs_no_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here"
)


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


@needs_no_vllm
def test_vllm_without_vllm_names_the_install_command():
    with pytest.raises(EngineUnavailable, match=r"pip install 'sovereign-mlops\[vllm\]'"):
        engine_command(EngineSpec(Path("m"), "n", port=8001, engine="vllm"))


@needs_no_vllm
def test_serving_up_with_vllm_fails_cleanly(tmp_path, random_model_dir, helpers):
    done = helpers.serving_cli(
        tmp_path, "up", "--model", str(random_model_dir), "--engine", "vllm", timeout_s=60
    )
    assert done.returncode == 1
    assert "pip install 'sovereign-mlops[vllm]'" in done.stderr
    assert not (tmp_path / "serving" / "supervisor.pid").exists()
