"""Contract: a corpus of ordinary prose (no ``Q: ... A:`` tasks, no eval suite) goes through the
main job, ``dagster job execute -m orchestration.definitions -j train_and_deploy``, to a served
champion: evaluation computes held-out perplexity, the gate decides on perplexity and says so
(``gate.basis`` tag and metadata), and a second run on the same state ends cleanly too, with
the challenger compared with the champion on the same held-out texts.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import dagster as dg
import pytest
from openai import OpenAI

from registry import CHAMPION, RegistryClient, RegistryConfig
from serving.stack import ROUTE, status

from .test_second_run import FAST_CANARY, run_events

# several runs of the main job; minutes each on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

SENTENCES = [
    "The river ran quietly past the old mill, where nobody had worked for many years.",
    "In the morning the baker opened the shutters and set the bread out on the sill.",
    "A cold wind came down from the hills and rattled the windows of the school.",
    "She kept her letters in a tin box under the stairs, tied with a faded ribbon.",
    "The ferry was late again, and the passengers stood in the rain without complaint.",
    "He had never seen the sea before, and for a long time he said nothing at all.",
    "Every autumn the orchard filled with wasps, and the children were told to stay away.",
    "The doctor walked from village to village, carrying his bag and a borrowed umbrella.",
    "At the end of the lane stood a chapel whose bell had been silent since the war.",
    "They argued about the price of coal until the lamp burned low and the fire went out.",
    "The clerk wrote each name slowly, as if the ink were more precious than the paper.",
    "When the snow melted, the road to the market turned into a river of mud.",
    "Her brother sent money from the city, but never once wrote about his work there.",
    "The old dog slept by the door and lifted his head only when the gate creaked.",
    "On Sundays the square was empty except for the pigeons and a man selling chestnuts.",
    "The captain studied the sky for a long while before he gave the order to sail.",
    "Nobody in the house could remember who had planted the tall pine by the wall.",
    "The teacher read aloud from a thick book, and the room grew quiet and warm.",
    "A lantern swung above the stable door, throwing long shadows across the yard.",
    "By evening the harvest was in, and the farmers sat down to bread and cheese.",
    "The train crossed the bridge with a long whistle that echoed through the valley.",
    "His grandmother told stories of wolves, though none had been seen for a century.",
    "The shop sold everything from nails to needles, and its owner knew every price.",
    "A letter arrived with a foreign stamp, and the whole street wanted to know its news.",
]


def prose_records(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"id": f"prose-{seed}-{i}", "text": " ".join(rng.sample(SENTENCES, rng.randint(2, 4)))}
        for i in range(count)
    ]


def test_plain_text_corpus_reaches_a_served_champion_twice(stack, tmp_path) -> None:
    stack.env.pop("MLFLOW_TRACKING_URI", None)
    stack.landing.mkdir(parents=True)
    with (stack.landing / "prose.jsonl").open("w") as f:
        for record in prose_records(1500, seed=3):
            f.write(json.dumps(record) + "\n")
    config = tmp_path / "run.yaml"
    # a short training run: this checks the path, not how well prose can be learned
    config.write_text(
        "ops:\n" + FAST_CANARY + "  trained_model:\n    config:\n      max_steps: 100\n"
    )
    registry = RegistryClient(RegistryConfig.resolve(stack.home))
    try:
        proc, run = stack.execute_job("train_and_deploy", config, timeout=1500)
        assert proc.returncode == 0 and run.status == dg.DagsterRunStatus.SUCCESS, proc.stderr[
            -4000:
        ]
        materialized, checks = run_events(stack, run.run_id)
        evaluation = materialized["evaluation"]
        assert evaluation["gate_basis"] == "perplexity" and evaluation["gate_verdict"] == "passed"
        assert evaluation["suites"] == "none" and "exact_match" not in evaluation
        assert 1.0 < evaluation["perplexity"] < 100.0
        assert "no task suite; the gate decides on held-out perplexity" in evaluation["comparison"]
        assert checks["gate"].passed and materialized["deployment"]["decision"] == "promoted"
        tags = registry.version_tags("1")
        assert (tags["gate.basis"], tags["gate.verdict"], tags["eval.suites"]) == (
            "perplexity",
            "passed",
            "none",
        )
        assert registry.aliases()[CHAMPION] == "1"
        state = status(stack.home)
        client = OpenAI(base_url=f"{state['gateway']['url']}/v1", api_key="unused", timeout=30)
        answer = client.completions.create(
            model=ROUTE, prompt="The river ran", max_tokens=8, temperature=0
        )
        assert answer.usage.completion_tokens > 0

        # the same state again: a challenger compared with the champion on the same texts
        proc, run = stack.execute_job("train_and_deploy", config, timeout=1500)
        assert proc.returncode == 0 and run.status == dg.DagsterRunStatus.SUCCESS, proc.stderr[
            -4000:
        ]
        materialized, checks = run_events(stack, run.run_id)
        evaluation = materialized["evaluation"]
        assert evaluation["champion_version"] == "1" and evaluation["gate_basis"] == "perplexity"
        assert evaluation["gate_n"] == evaluation["examples"] > 20
        assert evaluation["gate_ci_low"] <= evaluation["gate_effect"] <= evaluation["gate_ci_high"]
        champion = registry.aliases()[CHAMPION]
        assert champion in {"1", "2"}
        assert materialized["deployment"]["served_version"] == champion
    finally:
        subprocess.run(
            [sys.executable, "-m", "serving", "--home", str(stack.home), "down"],
            env=stack.env,
            capture_output=True,
            timeout=60,
        )
