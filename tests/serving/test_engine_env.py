"""Contract: least privilege. An engine started by the supervisor (``python -m serving up``)
sees none of the secrets in the operator's environment (partner API keys, the gateway admin
token, anything named like a secret); the gateway, which calls partners, keeps the keys.
Read from ``/proc/PID/environ`` of the real processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.engine.launcher import engine_environment

pytestmark = pytest.mark.slow

SECRETS = {
    "OPENAI_API_KEY": "sk-test-partner-key",
    "MLOPS_PARTNER_ANTHROPIC_KEY": "sk-ant-test",
    "HF_TOKEN": "hf_test_token",
    "SOME_DB_PASSWORD": "hunter2",
}


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_engine_environment_is_an_allowlist():
    env = engine_environment(
        {"PATH": "/bin", "OMP_NUM_THREADS": "1", "AWS_SECRET_ACCESS_KEY": "x", **SECRETS}
    )
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1"}


def test_supervised_engine_gets_no_secret_and_the_gateway_keeps_partner_keys(
    stack_factory, good_model_dir, monkeypatch
):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    _, stack = stack_factory(good_model_dir)
    (engine,) = stack["engines"].values()
    engine_env = environ_of(engine["pid"])
    leaked = {n for n, v in engine_env.items() if v in SECRETS.values()}
    assert not leaked, leaked
    assert "MLOPS_GATEWAY_ADMIN_TOKEN" not in engine_env
    assert engine_env["HF_HUB_OFFLINE"] == "1" and "PATH" in engine_env
    gateway_env = environ_of(stack["gateway"]["pid"])
    assert gateway_env["OPENAI_API_KEY"] == SECRETS["OPENAI_API_KEY"]
    assert gateway_env["MLOPS_GATEWAY_ADMIN_TOKEN"]
