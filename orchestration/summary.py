"""`python -m orchestration.summary`: where to look after the main job, and one answer.

Printed at the end of `make demo`: how to open the Dagster and MLflow UIs over this
`$MLOPS_HOME`, which registry version is champion and the data it was trained on, the
gateway URL, and one completion from the served model through the unmodified `openai`
client, so a new user sees the whole loop work.
"""

from __future__ import annotations

import sys

from openai import OpenAI

from ingestion.sample import format_record
from observability.settings import mlops_home
from registry import CHAMPION, Lineage
from registry.client import RegistryClient
from registry.config import RegistryConfig
from serving.stack import ROUTE, status

PROMPT = format_record("what comes after 41?", "").rstrip()


def main() -> int:
    home = mlops_home()
    config = RegistryConfig.resolve(home)
    client = RegistryClient(config)
    aliases = client.aliases()
    champion = aliases.get(CHAMPION)
    lineage = Lineage.from_tags(client.version_tags(champion) if champion else {})
    stack = status(home)
    gateway = (stack.get("gateway") or {}).get("url") if stack.get("running") else None

    print("\n== sovereign-mlops: where to look")
    print(f"state:       {home}")
    print(
        f"Dagster UI:  MLOPS_HOME={home} DAGSTER_HOME={home}/dagster .venv/bin/dagster dev "
        "-w workspace.yaml   # http://127.0.0.1:3000"
    )
    print(
        f"MLflow UI:   .venv/bin/mlflow server --backend-store-uri {config.tracking_uri} "
        + (f"--default-artifact-root {config.artifact_root} " if config.artifact_root else "")
        + "--host 127.0.0.1 --port 5000   # http://127.0.0.1:5000"
    )
    print(f"registry:    {config.model_name} aliases {aliases or '(none)'}")
    if champion:
        print(
            f"champion:    version {champion}, data version {'?' if lineage.data_version is None else lineage.data_version}"
            f", training run {lineage.training_run_id or '?'}"
        )
    if not gateway:
        print(
            "gateway:     not running (start it with: .venv/bin/python -m serving up --model DIR)"
        )
        return 1
    print(f"gateway:     {gateway}/v1  (model {ROUTE!r}; `python -m serving status|down`)")
    answer = OpenAI(base_url=f"{gateway}/v1", api_key="unused", timeout=30, max_retries=2)
    completion = answer.completions.create(
        model=ROUTE, prompt=PROMPT, max_tokens=8, temperature=0, stop=["\n"]
    )
    print(f"completion:  {PROMPT!r} -> {completion.choices[0].text.strip()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
