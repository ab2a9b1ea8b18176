"""`PartnerQuorum` (resource key `partners`) and where the partner layer's settings come from.

The serving config (partners and fallback routes, YAML) is the gateway's: the Dagster side
reads the same file, found the way the gateway finds it
(:meth:`observability.settings.Settings.serving_config_path`), for the dependency inventory.

The resource key `partners` is what makes an asset a partner user in the dependency
inventory: only assets that really call partners (the quorum review) require it, so the
`no_partner_on_critical_path` check sees exactly who does.

The sensor interval is `MLOPS_PARTNER_SENSOR_INTERVAL_S`: read when the code location
builds its definitions (Dagster fixes a sensor's minimum interval there) and again at each
tick, for the sustain time.
"""

import dagster as dg

from observability.settings import PARTNER_SENSOR_INTERVAL_ENV, Settings
from serving.partners.quorum import QuorumConfig

INTERVAL_ENV = PARTNER_SENSOR_INTERVAL_ENV


def sensor_interval_s() -> int:
    """`MLOPS_PARTNER_SENSOR_INTERVAL_S` (whole seconds, >= 1), default 30."""
    return Settings.from_env().partner_sensor_interval_s


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
