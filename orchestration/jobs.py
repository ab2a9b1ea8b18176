"""Run tags shared by jobs of several domains."""

from __future__ import annotations

#: Runs carrying this tag write to the Delta tables; the instance's run queue allows one
#: at a time (`tag_concurrency_limits` in deploy/dagster/*.yaml).
LAKE_WRITER_TAGS = {"mlops/lake-writer": "lake"}

#: Runs carrying this tag may start or step a canary on the gateway route; one at a time,
#: so two rollouts never race for the canary slot.
ROLLOUT_TAGS = {"mlops/rollout": "sovereign-lm"}
