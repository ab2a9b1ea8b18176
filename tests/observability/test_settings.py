"""Contract: every process resolves ``$MLOPS_HOME``, the serving config and the sensor
intervals the same way, when asked and never at import: a bad interval stops the code
location when it builds its definitions, naming the variable, but not an import of the
sensor modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from observability.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_home_defaults_to_dot_mlops_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).home == tmp_path.resolve() / ".mlops"
    assert Settings.from_env({"MLOPS_HOME": "state"}).home == tmp_path.resolve() / "state"


def test_serving_config_explicit_else_under_home_when_present(tmp_path) -> None:
    settings = Settings.from_env({"MLOPS_HOME": str(tmp_path)})
    assert settings.serving_config_path() is None
    config = tmp_path / "serving" / "config.yaml"
    config.parent.mkdir()
    config.write_text("partners: {}\n")
    assert settings.serving_config_path() == config
    explicit = Settings.from_env({"MLOPS_HOME": str(tmp_path), "MLOPS_SERVING_CONFIG": "/x.yaml"})
    assert explicit.serving_config_path() == Path("/x.yaml")


def test_sensor_intervals_default_and_refuse_bad_values() -> None:
    settings = Settings.from_env({"MLOPS_STREAM_SENSOR_INTERVAL_S": "2"})
    assert (settings.partner_sensor_interval_s, settings.stream_sensor_interval_s) == (30, 2)
    with pytest.raises(ValueError, match="MLOPS_PARTNER_SENSOR_INTERVAL_S='0'.*>= 1"):
        Settings.from_env({"MLOPS_PARTNER_SENSOR_INTERVAL_S": "0"})


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sensor_modules_import_whatever_the_environment_and_the_builder_reads_it() -> None:
    bad = {"MLOPS_PARTNER_SENSOR_INTERVAL_S": "fast"}
    imported = _python(
        "import orchestration.defs.partners.sensors, orchestration.defs.data.stream", **bad
    )
    assert imported.returncode == 0, imported.stderr
    built = _python(
        "from orchestration.definitions import defs;"
        "print(defs.resolve_sensor_def('partner_health_sensor').minimum_interval_seconds)",
        MLOPS_PARTNER_SENSOR_INTERVAL_S="7",
    )
    assert built.returncode == 0 and built.stdout.strip() == "7", built.stderr
    refused = _python("import orchestration.definitions", **bad)
    assert refused.returncode != 0 and "MLOPS_PARTNER_SENSOR_INTERVAL_S='fast'" in refused.stderr
