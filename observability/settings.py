"""The product's settings from the environment, read when a process or code location starts.

Every process of the product finds its state the same way: ``$MLOPS_HOME`` (default
``./.mlops``, made absolute against the working directory), the serving config
(``$MLOPS_SERVING_CONFIG``, else ``$MLOPS_HOME/serving/config.yaml`` when it exists) and
the Dagster sensors' intervals. :meth:`Settings.from_env` reads them when called, never at
import, so a test or a command that sets a variable first is always seen. A bad value is
refused naming the variable and what it must be.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

HOME_ENV = "MLOPS_HOME"
SERVING_CONFIG_ENV = "MLOPS_SERVING_CONFIG"
PARTNER_SENSOR_INTERVAL_ENV = "MLOPS_PARTNER_SENSOR_INTERVAL_S"
STREAM_SENSOR_INTERVAL_ENV = "MLOPS_STREAM_SENSOR_INTERVAL_S"
DEFAULT_HOME = ".mlops"
DEFAULT_SENSOR_INTERVAL_S = 30


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    home: Path
    serving_config: Path | None = None  # explicit; see serving_config_path()
    partner_sensor_interval_s: int = Field(DEFAULT_SENSOR_INTERVAL_S, ge=1)
    stream_sensor_interval_s: int = Field(DEFAULT_SENSOR_INTERVAL_S, ge=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        explicit = env.get(SERVING_CONFIG_ENV, "").strip()
        return cls(
            home=home_from(env.get(HOME_ENV) or DEFAULT_HOME),
            serving_config=Path(explicit).expanduser() if explicit else None,
            partner_sensor_interval_s=_interval(env, PARTNER_SENSOR_INTERVAL_ENV),
            stream_sensor_interval_s=_interval(env, STREAM_SENSOR_INTERVAL_ENV),
        )

    def serving_config_path(self, home: Path | None = None) -> Path | None:
        """The serving config the gateway reads: the explicit file, else
        ``serving/config.yaml`` under ``home`` (default: this home) when it exists."""
        if self.serving_config is not None:
            return self.serving_config
        default = (home or self.home) / "serving" / "config.yaml"
        return default if default.is_file() else None


def home_from(value: str | Path) -> Path:
    """A home given on a command line or in config, made absolute the same way."""
    return Path(value).expanduser().resolve()


def mlops_home() -> Path:
    """``$MLOPS_HOME`` as every process resolves it."""
    return Settings.from_env().home


def _interval(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return DEFAULT_SENSOR_INTERVAL_S
    value = int(raw) if raw.lstrip("-").isdigit() else 0
    if value < 1:
        raise ValueError(f"{name}={raw!r}: expected a whole number of seconds >= 1")
    return value
