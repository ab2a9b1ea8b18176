"""A deliberately wrong code location for ``test_inventory``: ``trained_model``, on the critical
path of ``train_and_deploy``, asks the partners (it requires the ``partners`` resource).

Loaded by the ``dagster`` CLI with ``-f``; never imported by the suite itself.
"""

import dagster as dg

from orchestration.defs.partners import PartnerQuorum
from orchestration.defs.partners.dependencies import dependency_inventory
from orchestration.defs.registry import MlflowResource
from orchestration.defs.serving import ServingStack
from orchestration.resources import MlopsHome


@dg.asset(group_name="training", owners=["team:ml-platform"])
def trained_model(partners: PartnerQuorum) -> None:
    """A model whose training asks a partner: the wiring the inventory check must refuse."""


@dg.asset(group_name="serving", owners=["team:ml-platform"], deps=[trained_model])
def deployment() -> None:
    """The served model."""


defs = dg.Definitions(
    assets=[trained_model, deployment, dependency_inventory],
    jobs=[
        dg.define_asset_job(
            "train_and_deploy", selection=dg.AssetSelection.assets(trained_model, deployment)
        )
    ],
    resources={
        "mlops": MlopsHome(),
        "mlflow_registry": MlflowResource(),
        "serving_stack": ServingStack(),
        "partners": PartnerQuorum(),
    },
)
