"""Fixtures for the partner layer's Dagster tests: fake partners, and a real serving stack
(supervisor, gateway, embedded engine on loopback) whose serving config declares them.

``partner_world(**partners)`` writes ``$MLOPS_HOME/serving/config.yaml`` for fake partners of
the given kinds (``auto`` = the partners in order, then ``sovereign-lm``), exports their keys
and the admin token, and brings the stack up with a tiny reference model through
``python -m serving up``. The gateway reads the config at start.
"""

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from serving import stack
from serving.gateway.client import GatewayAdmin
from testing.partners.fake import FakePartnerServer

ADMIN_TOKEN = "partners-test-admin-token"
PROBE_INTERVAL_S = 0.5


def key_env(name: str) -> str:
    return "FAKE_" + name.upper().replace("-", "_").replace(".", "_") + "_KEY"


def key_value(name: str) -> str:
    return f"sk-secret-{name}-0123456789"


def serving_config(partners: dict[str, FakePartnerServer], order: list[str]) -> dict:
    return {
        "partners": {
            name: {
                "kind": server.app.kind,
                "base_url": server.base_url,
                "model": f"{name}-model",
                "api_key_env": key_env(name),
                "timeout_s": 5,
                "probe_interval_s": PROBE_INTERVAL_S,
            }
            for name, server in partners.items()
        },
        "fallback_routes": {"auto": [*order, stack.ROUTE]},
    }


@dataclass
class PartnerWorld:
    home: Path
    partners: dict[str, FakePartnerServer]
    admin: GatewayAdmin
    env: dict[str, str] = field(default_factory=dict)

    def view(self) -> dict:
        return self.admin.partners()

    def wait_state(self, name: str, state: str, timeout_s: float = 60.0) -> dict:
        """Bounded wait until the gateway reports partner ``name`` in ``state``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            partner = self.view()["partners"][name]
            if partner["state"] == state:
                return partner
            time.sleep(0.2)
        raise AssertionError(f"{name} not {state} after {timeout_s}s: {self.view()['partners']}")


@pytest.fixture(scope="session")
def sovereign_model(tmp_path_factory) -> Path:
    from evaluation.reference_model import build_reference_model

    return build_reference_model(tmp_path_factory.mktemp("sovereign") / "model")


@pytest.fixture
def fake_partner() -> Iterator[Callable[..., FakePartnerServer]]:
    """``fake_partner(kind, name)``: a started fake partner expecting its test key."""
    started: list[FakePartnerServer] = []

    def _start(kind: str, name: str) -> FakePartnerServer:
        server = FakePartnerServer(kind, name, key=key_value(name))
        started.append(server)
        return server.start()

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def partner_world(tmp_path, monkeypatch, fake_partner, sovereign_model):
    homes: list[Path] = []

    def _world(**kinds: str) -> PartnerWorld:
        home = tmp_path / "mlops"
        partners = {name.replace("_", "-"): kind for name, kind in kinds.items()}
        servers = {name: fake_partner(kind, name) for name, kind in partners.items()}
        env = {
            "MLOPS_HOME": str(home),
            "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            **{key_env(name): key_value(name) for name in servers},
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.delenv("MLOPS_SERVING_CONFIG", raising=False)
        config = home / "serving" / "config.yaml"
        config.parent.mkdir(parents=True)
        config.write_text(yaml.safe_dump(serving_config(servers, list(servers))))
        homes.append(home)
        serving_cli(home, "up", "--model", str(sovereign_model), "--timeout-s", "120")
        url = stack.status(home)["gateway"]["url"]
        return PartnerWorld(home, servers, GatewayAdmin(url, ADMIN_TOKEN), {**os.environ})

    yield _world
    for home in homes:
        serving_cli(home, "down")


def serving_cli(home: Path, *args: str) -> None:
    """``python -m serving``, as an operator runs it (its supervisor is then not a child of
    the test process, so ``down`` sees it exit instead of a zombie)."""
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"serving {' '.join(args)} failed:\n{done.stderr[-3000:]}"
