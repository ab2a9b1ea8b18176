"""Contract: the serving domain's Dagster graph: ``deployment`` depends on ``registered_model``
and carries a non-blocking ``canary_passed`` check, ``deploy`` selects it alone, and
``canary_health_sensor`` runs by default every 5 s; bad rollout config is refused up front."""

import dagster as dg
import pytest

from orchestration.defs import serving as serving_domain
from orchestration.defs.registry import MlflowResource
from orchestration.defs.serving import ServingStack
from orchestration.defs.serving.assets import DeploymentConfig, deployment
from orchestration.resources import MlopsHome


def test_graph_shape():
    defs = dg.Definitions(
        assets=[dg.AssetSpec("registered_model"), *serving_domain.defs.assets],
        jobs=serving_domain.defs.jobs,
        sensors=serving_domain.defs.sensors,
        resources={
            **serving_domain.defs.resources,
            "mlops": MlopsHome(),
            "mlflow_registry": MlflowResource(),
        },
    )
    graph = defs.resolve_asset_graph()
    node = graph.get(deployment.key)
    assert node.parent_keys == {dg.AssetKey("registered_model")}
    assert node.group_name == "serving" and node.owners and node.description
    [check] = deployment.check_specs
    assert check.name == "canary_passed" and not check.blocking
    job = defs.resolve_job_def("deploy")
    assert job.asset_layer.selected_asset_keys == {deployment.key}
    sensor = defs.resolve_sensor_def("canary_health_sensor")
    assert sensor.minimum_interval_seconds == 5
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_rollout_config_maps_to_canary_config_and_refuses_bad_steps():
    canary = DeploymentConfig(steps=[25.0, 100.0], window_s=2.0).canary(
        ServingStack(max_error_rate=0.1)
    )
    assert canary.steps == (25.0, 100.0) and canary.window_s == 2.0 and canary.poll_s == 0.5
    assert canary.max_error_rate == 0.1
    with pytest.raises(ValueError, match="end at 100"):
        DeploymentConfig(steps=[10.0, 50.0]).canary(ServingStack())
