"""`PartnerQuorum` (resource key `partners`) and where the partner layer's settings come from.

The serving config (partners and fallback routes, YAML) is the gateway's: the Dagster side
reads the same file, found the way the gateway finds it (`$MLOPS_SERVING_CONFIG`, else
`$MLOPS_HOME/serving/config.yaml` when it exists), for the dependency inventory.

The resource key `partners` is what makes an asset a partner user in the dependency
inventory: only assets that really call partners (the quorum review) require it, so the
`no_partner_on_critical_path` check sees exactly who does.

The sensor interval is read from `MLOPS_PARTNER_SENSOR_INTERVAL_S` when the code location
loads, because Dagster fixes a sensor's minimum interval when the sensor is defined.
"""

import os
from pathlib import Path

import dagster as dg

from serving.partners.config import CONFIG_ENV
from serving.partners.quorum import QuorumConfig

INTERVAL_ENV = "MLOPS_PARTNER_SENSOR_INTERVAL_S"
DEFAULT_INTERVAL_S = 30


def sensor_interval_s() -> int:
    """`MLOPS_PARTNER_SENSOR_INTERVAL_S` (whole seconds, >= 1), default 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a whole number of seconds >= 1")
    return value


def serving_config_path(home: Path) -> Path | None:
    """The serving config the gateway reads, or `None` when there is none."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    default = home / "serving" / "config.yaml"
    return default if default.is_file() else None


class PartnerQuorum(dg.ConfigurableResource):
    """How judgement questions are put to the partners (through the gateway)."""

    quorum: int = 2
    """Fewer healthy voters than this: no verdict."""
    include_sovereign: bool = False
    """Let the sovereign model vote too."""
    voters: list[str] = []
    """Partner names allowed to vote; empty: every healthy partner."""
    timeout_s: float = 30.0
    """Timeout of each voter's answer (one retry)."""

    def config(self) -> QuorumConfig:
        return QuorumConfig(
            quorum=self.quorum,
            include_sovereign=self.include_sovereign,
            voters=tuple(self.voters),
            timeout_s=self.timeout_s,
        )
