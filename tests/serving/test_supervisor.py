"""Contract: ``python -m serving up|status|down`` runs gateway + engine as supervised
processes, routes ``sovereign-lm`` to the engine, and restarts a crashed child; the
gateway's URL stays the same across ``down`` / ``up`` of one ``$MLOPS_HOME``, and a port
taken by another process is refused by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_serves_restarts_a_killed_engine_and_down_stops_everything(
    stack_factory, good_model_dir, probe_tasks, helpers, wait_until
):
    home, stack = stack_factory(good_model_dir)
    gateway = stack["gateway"]["url"]
    assert (home / "serving" / "stack.json").is_file()
    ((name, engine),) = stack["engines"].items()
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    prompt, answer = probe_tasks[0]
    ask = lambda: client.completions.create(  # noqa: E731
        model="sovereign-lm", prompt=prompt, max_tokens=10, temperature=0
    )
    assert ask().choices[0].text.strip() == answer

    os.kill(engine["pid"], signal.SIGKILL)

    def restarted():
        status = json.loads(helpers.serving_cli(home, "status").stdout)
        entry = status["engines"][name]
        return entry if entry["healthy"] and entry["pid"] != engine["pid"] else None

    entry = wait_until(restarted, "the engine to be restarted", 120)
    assert entry["restarts"] == 1 and entry["url"] == engine["url"]  # same port: route valid
    assert ask().choices[0].text.strip() == answer

    status = json.loads(helpers.serving_cli(home, "status").stdout)
    pids = [status["supervisor_pid"], status["gateway"]["pid"], entry["pid"]]
    done = helpers.serving_cli(home, "down")
    assert done.returncode == 0 and json.loads(done.stdout) == {"stopped": True}
    wait_until(lambda: not any(alive(p) for p in pids), "all stack processes to exit", 30)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{gateway}/health", timeout=2)
    assert json.loads(helpers.serving_cli(home, "status").stdout)["running"] is False

    again = helpers.serving_cli(home, "up", "--model", str(good_model_dir))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["gateway"]["url"] == gateway  # the printed URL still works
    assert ask().choices[0].text.strip() == answer
    assert helpers.serving_cli(home, "down").returncode == 0

    port = int(gateway.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        refused = helpers.serving_cli(home, "up", "--model", str(good_model_dir))
    assert refused.returncode != 0
    assert f"gateway port {port}" in refused.stderr and "--gateway-port" in refused.stderr
