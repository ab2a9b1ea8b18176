"""Contract: after one `train_and_deploy` run, a new user sees it in the web UIs, rendered by
headless Chromium: Dagster's lineage shows corpus -> trained_model -> registered_model ->
deployment, the asset pages show the `records_balance` and `gate` checks passed, the
Deployment page shows the daemon's sensor, schedule, run-queue and backfill loops running,
and MLflow's registered-model page for `sovereign-lm` shows the `champion` alias.
Screenshots land in test-artifacts/ui/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

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
