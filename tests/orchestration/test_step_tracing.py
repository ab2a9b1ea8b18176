"""Contract: a Dagster step wrapped by ``traced_step`` runs, and while it runs the current
trace id is its run id (so its log lines and the ``TRACEPARENT`` it hands to torchrun name
the run's trace), also with export off; the wrapped asset keeps its name and docstring."""

import dagster as dg

from observability import tracing
from orchestration.tracing import traced_step


def test_traced_step_runs_inside_its_runs_trace(monkeypatch):
    for name in tracing.ENDPOINT_ENVS:
        monkeypatch.delenv(name, raising=False)
    seen: dict[str, object] = {}

    @dg.asset
    @traced_step
    def traced(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """What the UI shows."""
        seen["ids"] = tracing.current_ids()
        seen["traceparent"] = tracing.child_env().get(tracing.TRACEPARENT_ENV, "")
        return dg.MaterializeResult(metadata={"ok": True})

    with dg.instance_for_test() as instance:
        result = dg.materialize([traced], instance=instance)
    assert result.success
    run_trace = result.run_id.replace("-", "")
    assert seen["ids"] is not None and seen["ids"][0] == run_trace
    assert f"-{run_trace}-" in seen["traceparent"]
    assert traced.key == dg.AssetKey("traced") and traced.descriptions_by_key[traced.key] == (
        "What the UI shows."
    )
