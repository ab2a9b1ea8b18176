"""Contract: the sovereign layer works alone. With every declared partner unreachable
(connection refused), the main job ``train_and_deploy`` completes through the real
``dagster`` CLI, and the served model answers through the gateway with the ``openai``
client, on ``sovereign-lm`` and on the partner-first route ``auto`` alike. With the stack then
stopped, ``failover_to_sovereign`` brings the registry's champion back up and pins ``auto``.
"""

import socket
import subprocess
import sys

import dagster as dg
import pytest
import yaml
from openai import OpenAI

from ingestion.sample import format_record, write_landing
from serving.stack import ROUTE, status

pytestmark = pytest.mark.slow
PROMPT = format_record("what comes after 41?", "").rstrip()
RUN_CONFIG = "ops:\n  deployment:\n    config:\n      steps: [100.0]\n      window_s: 1.0\n"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nothing listens there


def unreachable_partners() -> dict:
    urls = {
        "openai-main": ("openai", f"http://127.0.0.1:{closed_port()}/v1"),
        "claude": ("anthropic", f"http://127.0.0.1:{closed_port()}"),
        "gemini": ("gemini", f"http://127.0.0.1:{closed_port()}"),
    }
    return {
        "partners": {
            name: {
                "kind": kind,
                "base_url": url,
                "model": f"{name}-model",
                "api_key_env": "SOVEREIGNTY_TEST_KEY",
                "timeout_s": 2,
                "probe_interval_s": 1,
            }
            for name, (kind, url) in urls.items()
        },
        "fallback_routes": {"auto": [*urls, ROUTE]},
    }


def test_main_job_completes_and_serves_with_every_partner_unreachable(stack, tmp_path) -> None:
    stack.env.pop("MLFLOW_TRACKING_URI", None)
    stack.env["SOVEREIGNTY_TEST_KEY"] = "sk-unused"
    config = stack.home / "serving" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump(unreachable_partners()))
    write_landing(stack.landing, count=2000, seed=0)
    run_config = tmp_path / "run.yaml"
    run_config.write_text(RUN_CONFIG)
    try:
        proc, run = stack.execute_job("train_and_deploy", run_config)
        assert proc.returncode == 0 and run.status == dg.DagsterRunStatus.SUCCESS, (
            proc.stdout[-3000:] + proc.stderr[-3000:]
        )
        answer(stack, ROUTE, "auto")

        assert serving_cli(stack, "down").returncode == 0
        proc = stack.dagster(
            "job", "execute", "-m", "orchestration.definitions", "-j", "failover_to_sovereign"
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        with dg.DagsterInstance.from_config(str(stack.dagster_home)) as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey("routing_state"))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        assert meta["sovereign_started"] is True and meta["champion_version"] == "1"
        assert meta["pinned_target"] == ROUTE and meta["changed"] is True
        answer(stack, "auto")
    finally:
        serving_cli(stack, "down")


def serving_cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", "--home", str(stack.home), *args],
        env=stack.env,
        capture_output=True,
        timeout=60,
    )


def answer(stack, *models: str) -> None:
    """One completion per model name through the gateway, with the ``openai`` client."""
    state = status(stack.home)
    assert state["running"], state
    client = OpenAI(
        base_url=f"{state['gateway']['url']}/v1", api_key="unused", timeout=60, max_retries=1
    )
    for model in models:
        reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
        assert reply.choices and reply.usage.completion_tokens > 0, (model, reply)
