"""Contract: after one `train_and_deploy` run, a new user sees it in the web UIs, rendered by
headless Chromium: Dagster's lineage shows corpus -> trained_model -> registered_model ->
deployment, the asset pages show the `records_balance` and `gate` checks passed, the
Deployment page shows the daemon's sensor, schedule, run-queue and backfill loops running,
MLflow's registered-model page for `sovereign-lm` shows the `champion` alias, and after a
real partner outage and recovery (a fake partner answering 500s, then healing; the daemon's
`partner_health_sensor` reacting on its own) the `routing_state` asset shows both the
failover and the restore.
Screenshots land in test-artifacts/ui/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from PIL import Image

from serving.gateway.client import GatewayAdmin
from serving.stack import ROUTE, admin_token, free_port, status

COMMUNITY_DIALOG = "Join the Dagster community"


def assert_real_screenshot(path: Path, max_background: float = 0.95) -> None:
    """A rendered page, not a blank or error frame: full size and many distinct colours, the
    most common one (the background) covering at most ``max_background`` of the frame."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        assert image.width >= 1200 and image.height >= 700, (path, image.size)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 64, (path, len(colours or []))
        dominant = max(colours)[0] / (image.width * image.height) if colours else 0
        assert dominant < max_background, (path, dominant)


@pytest.fixture(scope="module")
def dagster_ui(servers, browser):
    """Open Dagster once and skip its first-visit community dialog, as a new user does."""
    browser.goto(f"{servers.dagster_url}/overview")
    browser.wait_for_text("Overview", "Runs")
    if browser.wait_for_text_or_none(COMMUNITY_DIALOG, timeout_s=15):
        assert browser.click_button("Skip"), "community dialog has no Skip button"
        browser.wait_for_text_gone(COMMUNITY_DIALOG)
    return browser


def test_dagster_lineage_shows_the_pipeline(servers, dagster_ui) -> None:
    dagster_ui.goto(
        f"{servers.dagster_url}/assets/deployment?view=lineage&lineageScope=upstream&lineageDepth=10"
    )
    assets = ("corpus", "corpus_split", "trained_model", "evaluation", "registered_model")
    text = dagster_ui.wait_for_text(*assets, "deployment", "Upstream")
    # The graph nodes are laid out in group boxes; every domain's group is drawn.
    for group in ("data", "training", "registry", "serving"):
        assert re.search(rf"^{group}$", text, re.M), (group, text)
    assert COMMUNITY_DIALOG not in text
    assert_real_screenshot(dagster_ui.screenshot("dagster-lineage"))


@pytest.mark.parametrize(
    ("asset", "check"), [("corpus", "records_balance"), ("registered_model", "gate")]
)
def test_dagster_asset_page_shows_check_passed(servers, dagster_ui, asset, check) -> None:
    # The link a user follows from the checks list to one check's detail.
    dagster_ui.goto(f"{servers.dagster_url}/assets/{asset}?view=checks&checkDetail={check}")
    text = dagster_ui.wait_for_text(asset, check, "Succeeded", "Latest execution", "Passed")
    # The list shows each check's latest status; the detail pane shows this check's result.
    assert re.search(rf"^{check}\n(?:{check}\n)?Succeeded$", text, re.M), text
    detail = text[text.index("Latest execution") :]
    assert re.search(r"^Evaluation result\nPassed$", detail, re.M), detail
    assert f"{check}\nExecute" in text, text  # the detail pane's heading is this check
    assert "Failed" not in text
    assert_real_screenshot(dagster_ui.screenshot(f"dagster-{asset}-checks"))


def test_dagster_daemons_page_shows_the_daemon_running(servers, dagster_ui) -> None:
    dagster_ui.goto(f"{servers.dagster_url}/deployment/daemons")
    daemons = ("Sensors", "Scheduler", "Run queue", "Backfill")
    text = dagster_ui.wait_for_text("Daemon statuses", *daemons)
    for daemon in daemons:
        assert re.search(rf"^{daemon}\s*^Running$", text, re.M), (daemon, text)
    assert "Not running" not in text, text
    # A short table on a white page: a blank frame is still 100% one colour.
    assert_real_screenshot(dagster_ui.screenshot("dagster-daemons"), max_background=0.99)


def test_mlflow_registered_model_shows_champion(servers, browser) -> None:
    browser.goto(f"{servers.mlflow_url}/#/models/sovereign-lm")
    text = browser.wait_for_text("sovereign-lm", "Version 1", "champion")
    # Aliases render as "@ <alias>" chips (the space may be a non-breaking one).
    assert re.search(r"^@\s*champion$", text, re.M), text
    assert re.search(r"^gate\.passed\s*:\s*true$", text, re.M), text
    assert_real_screenshot(browser.screenshot("mlflow-sovereign-lm"))


def _succeeded(instance: dg.DagsterInstance, job: str) -> str | None:
    runs = instance.get_runs(dg.RunsFilter(job_name=job))
    done = [run.run_id for run in runs if run.status == dg.DagsterRunStatus.SUCCESS]
    return done[0] if done else None


@pytest.fixture(scope="module")
def partner_outage(servers, wait_until) -> Iterator[dict[str, str]]:
    """A fake OpenAI-style partner first in `auto`, down (500s) until the daemon has failed
    `auto` over to the sovereign model, then healed until it has restored it. Yields the
    two runs' ids."""
    port = free_port()
    log = (servers.home / "fake-partner.log").open("w")
    fake = subprocess.Popen(
        [sys.executable, "-m", "testing.partners.fake", "--kind", "openai", "--name", "gpt"]
        + ["--port", str(port)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    partner = f"http://127.0.0.1:{port}"
    admin = GatewayAdmin(status(servers.home)["gateway"]["url"], admin_token(servers.home))
    try:
        wait_until(lambda: _up(f"{partner}/health"), "the fake partner", 60)
        spec = {"kind": "openai", "base_url": f"{partner}/v1", "model": "fake-model"}
        admin.put_partner("gpt", {**spec, "timeout_s": 5.0, "probe_interval_s": 1.0})
        admin.put_fallback_route("auto", ["gpt", ROUTE])
        instance = dg.DagsterInstance.from_config(str(servers.home / "dagster"))

        httpx.post(f"{partner}/_control", json={"mode": "error_500"}, timeout=5)
        failover = wait_until(
            lambda: _succeeded(instance, "failover_to_sovereign"), "the failover run", 180
        )
        assert admin.partners()["fallback_routes"]["auto"]["pinned"] == ROUTE
        httpx.post(f"{partner}/_control", json={"mode": "ok"}, timeout=5)
        restore = wait_until(
            lambda: _succeeded(instance, "restore_partners"), "the restore run", 180
        )
        assert admin.partners()["fallback_routes"]["auto"]["pinned"] is None
        yield {"failover": failover, "restore": restore}
    finally:
        # take the partner out of service first, so stopping it is not a new outage
        admin.put_fallback_route("auto", [ROUTE])
        admin.remove_partner("gpt")
        fake.terminate()
        fake.wait(10)
        log.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_dagster_shows_partner_failover_and_recovery(servers, partner_outage, dagster_ui) -> None:
    failover, restore = partner_outage["failover"][:8], partner_outage["restore"][:8]
    # The asset's events: the latest materialization (the restore) with its evidence.
    dagster_ui.goto(f"{servers.dagster_url}/assets/routing_state?view=events")
    text = dagster_ui.wait_for_text("routing_state", f"Materialized in run {restore}", "Metadata")
    assert re.search(r"^action\s*^restore$", text, re.M), text
    assert re.search(r"^pinned_target\s*^none$", text, re.M), text
    table = text[text.index("\npartners\n") : text.index("\nevidence\n")]
    assert re.search(r"^gpt\thealthy\t", table, re.M), table
    assert_real_screenshot(dagster_ui.screenshot("dagster-routing-state"))
    # The runs: the sensor started one failover and one restore, and both succeeded.
    dagster_ui.goto(f"{servers.dagster_url}/runs")
    text = dagster_ui.wait_for_text(failover, restore, "failover_to_sovereign", "restore_partners")
    assert "partner_health_sensor" in text, text
    assert_real_screenshot(dagster_ui.screenshot("dagster-partner-runs"))
