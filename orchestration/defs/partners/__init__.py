"""Dagster definitions of the partner layer: failover routing, the quorum review and the
dependency inventory.

`routing_state` with its jobs `failover_to_sovereign` / `restore_partners` and the
`partner_health_sensor`; `quorum_review` beside evaluation; `dependency_inventory`
with its blocking check `no_partner_on_critical_path`; the `partners` resource. None of
these assets is on the promotion path: `OFF_MAIN_JOB` is what the main job leaves out.
"""

import dagster as dg

from observability.settings import Settings

from .dependencies import dependency_inventory
from .resources import PartnerQuorum
from .review import quorum_review
from .routing import failover_to_sovereign, restore_partners, routing_state
from .sensors import partner_health_sensor_every

__all__ = ["OFF_MAIN_JOB", "PartnerQuorum", "build_defs"]

OFF_MAIN_JOB = dg.AssetSelection.assets(routing_state, quorum_review, dependency_inventory)


def build_defs(settings: Settings) -> dg.Definitions:
    """The partner layer's definitions, its sensor at the configured interval."""
    return dg.Definitions(
        assets=[routing_state, quorum_review, dependency_inventory],
        jobs=[failover_to_sovereign, restore_partners],
        sensors=[partner_health_sensor_every(settings.partner_sensor_interval_s)],
        resources={"partners": PartnerQuorum()},
    )
