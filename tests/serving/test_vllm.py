"""Contract: real vLLM (its CPU build, installed by ``make vllm``) serves a model trained by our
trainer behind the gateway, started by ``python -m serving up --engine vllm``:

* the unmodified ``openai`` client gets completions and chat, streaming and not, directly
  from vLLM and through the gateway, with the answers our embedded engine gives for the same
  model directory (both engines render chat with the directory's template);
* a canary rollout between two vLLM engines rolls back a canary that is SIGKILLed or
  SIGSTOPped under steady load with no failed client request, and promotes a good one;
* the supervisor restarts a killed stable vLLM engine (and reaps the engine-core process the
  killed server leaves behind).

One vLLM stack (``vllm_stack``, session-scoped) serves the whole module; tests run in file
order and each leaves the route with one stable engine and no canary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time

import httpx
import openai
import pytest

from serving.canary import CanaryConfig, CanaryController, Probe
from serving.engine_metrics import read_engine_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # vLLM starts: minutes
ROUTE = "sovereign-lm"
VLLM_START_S = 900.0  # a vLLM start takes 1-3 minutes on a busy 2-core host


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def complete(url: str, prompt: str, **extra) -> openai.types.Completion:
    return client(url).completions.create(
        model=ROUTE, prompt=prompt, max_tokens=8, temperature=0, **extra
    )


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def stable_engine(stack) -> tuple[str, dict]:
    name = stack.admin.state()["routes"][ROUTE]["stable"]
    return name, stack.fleet.paths.read_stack()["engines"][name]


class LoadGenerator:
    """Steady client traffic through the gateway; records every failed request."""

    def __init__(self, url: str, prompt: str, workers: int = 2) -> None:
        self.url, self.prompt = url, prompt
        self.stop_flag = threading.Event()
        self.ok, self.failures = 0, []
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def _work(self) -> None:
        body = {"model": ROUTE, "prompt": self.prompt, "max_tokens": 4, "temperature": 0}
        with httpx.Client(timeout=60) as http:
            while not self.stop_flag.is_set():
                try:
                    r = http.post(f"{self.url}/v1/completions", json=body)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> LoadGenerator:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(90)


@pytest.fixture
def probes(probe_tasks):
    return [Probe(prompt, answer) for prompt, answer in probe_tasks]


@pytest.fixture
def challenger(tmp_path, trained_model_dir):
    """The trained model under another directory: a distinct version, the same weights."""
    out = tmp_path / "challenger"
    shutil.copytree(trained_model_dir, out)
    return out


def canary_config(**overrides) -> CanaryConfig:
    # quality: the challenger has the stable model's weights, so it must match its accuracy;
    # request_timeout_s bounds how long the gateway waits on a stopped canary before it
    # retries the request on stable
    base = dict(
        window_s=3.0,
        poll_s=0.25,
        steps=(10.0, 50.0, 100.0),
        p95_slack_s=2.0,
        min_probe_accuracy=0.0,
        max_accuracy_drop=0.0,
        request_timeout_s=5.0,
    )
    return CanaryConfig(**{**base, **overrides})


def test_openai_client_direct_and_through_gateway(
    vllm_stack, trained_model_dir, probe_tasks, spawn
):
    _, engine = stable_engine(vllm_stack)
    assert engine["engine"] == "vllm"
    embedded = spawn("engine", "--model", str(trained_model_dir), "--served-model-name", ROUTE)
    prompts = [prompt for prompt, _ in probe_tasks[:3]]
    expected = {p: complete(embedded.url, p).choices[0].text for p in prompts}
    before = read_engine_metrics(engine["url"])
    for url in (engine["url"], vllm_stack.gateway):
        assert ROUTE in [m.id for m in client(url).models.list().data]
        for prompt in prompts:
            text = complete(url, prompt).choices[0].text
            assert text == expected[prompt], f"{url}: vLLM and the embedded engine disagree"
            streamed = "".join(c.choices[0].text for c in complete(url, prompt, stream=True))
            assert streamed == text
            messages = [{"role": "user", "content": prompt}]
            chat = client(url).chat.completions.create(
                model=ROUTE, messages=messages, max_tokens=8, temperature=0
            )
            assert chat.choices[0].message.content == text  # a task prompt passes through
            chunks = client(url).chat.completions.create(
                model=ROUTE, messages=messages, max_tokens=8, temperature=0, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        conversation = [
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": "what comes after 41?"},
        ]
        chat = client(url).chat.completions.create(
            model=ROUTE, messages=conversation, max_tokens=4, temperature=0
        )
        assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.prompt_tokens > 8
    # vLLM's own counters (its real metric names) saw every request, direct or via the gateway
    served = read_engine_metrics(engine["url"]).since(before)
    assert served.succeeded == 2 * (len(prompts) * 4 + 1) and served.generation_tokens > 0


def _roll_out_and_break(stack, challenger, probes, sig: int) -> tuple[object, float, object]:
    """Roll ``challenger`` out under load, send ``sig`` to its engine at 50%; return the
    result, the seconds from the signal to weight 0, and the load generator."""
    controller = CanaryController(
        stack.admin, stack.fleet, canary_config(window_s=120.0, steps=(50.0, 100.0))
    )
    outcome: dict = {}
    pid = None
    with LoadGenerator(stack.gateway, probes[0].prompt) as load:
        runner = threading.Thread(
            target=lambda: outcome.update(result=controller.run(challenger, probes, lambda: None))
        )
        runner.start()
        deadline = time.monotonic() + VLLM_START_S
        while stack.admin.state()["routes"][ROUTE]["canary_weight"] != 50.0:
            assert runner.is_alive(), f"rollout ended before 50%: {outcome}"
            assert time.monotonic() < deadline, "rollout never reached 50%"
            time.sleep(0.2)
        time.sleep(2.0)  # the canary is taking traffic now
        canary = stack.admin.state()["routes"][ROUTE]["canary"]
        pid = stack.fleet.pid(canary)
        try:
            os.kill(pid, sig)
            signalled = time.monotonic()
            while stack.admin.state()["routes"][ROUTE]["canary_weight"] != 0.0:
                assert time.monotonic() - signalled < 60, "no rollback within 60 s"
                time.sleep(0.05)
            to_weight_zero = time.monotonic() - signalled
            runner.join(180)
            time.sleep(2.0)  # load keeps running on the stable engine after the rollback
        finally:
            if sig == signal.SIGSTOP:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGCONT)
    return outcome["result"], to_weight_zero, load


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_vllm_canary_broken_under_load_rolls_back_with_zero_failed_requests(
    vllm_stack, challenger, probes, sig
):
    stable, _ = stable_engine(vllm_stack)
    result, to_weight_zero, load = _roll_out_and_break(vllm_stack, challenger, probes, sig)
    assert result.decision == "rolled_back", result.reason
    assert result.timeline[-1].weight == 50.0 and not result.timeline[-1].passed
    assert to_weight_zero < 30.0
    assert load.failures == [] and load.ok > 10
    route = vllm_stack.admin.state()["routes"][ROUTE]
    assert route["stable"] == stable and route["canary"] is None
    assert vllm_stack.fleet.pid(result.canary_backend) is None


def test_good_vllm_challenger_is_promoted(vllm_stack, challenger, probes, wait_until):
    old, old_engine = stable_engine(vllm_stack)
    promoted = []
    controller = CanaryController(vllm_stack.admin, vllm_stack.fleet, canary_config())
    with LoadGenerator(vllm_stack.gateway, probes[1].prompt) as load:
        result = controller.run(challenger, probes, lambda: promoted.append(True))
    assert result.decision == "promoted", result.reason
    assert promoted == [True]
    assert [s.weight for s in result.timeline] == [0.0, 10.0, 50.0, 100.0]
    # before any user traffic (weight 0) the warm canary answered every probe
    assert result.timeline[0].probe_accuracy is not None and result.timeline[0].passed
    assert all(s.passed for s in result.timeline)
    assert result.timeline[-1].canary["requests"] > 0
    assert result.timeline[-1].canary["engine_succeeded"] > 0  # read from vLLM's /metrics
    assert result.timeline[-1].probe_accuracy == result.timeline[-1].stable_probe_accuracy
    route = vllm_stack.admin.state()["routes"][ROUTE]
    assert route == {"stable": result.canary_backend, "canary": None, "canary_weight": 0.0}
    assert vllm_stack.fleet.pid(old) is None
    # the old server and its engine core are gone
    wait_until(lambda: group_gone(old_engine["pid"]), "the old engine's processes to exit", 30)
    assert load.failures == [] and load.ok > 0


def test_killed_stable_vllm_engine_is_restarted(vllm_stack, probe_tasks, wait_until):
    name, engine = stable_engine(vllm_stack)
    prompt = probe_tasks[0][0]
    before = complete(vllm_stack.gateway, prompt).choices[0].text
    os.kill(engine["pid"], signal.SIGKILL)

    def restarted():
        entry = vllm_stack.fleet.paths.read_stack()["engines"][name]
        return entry if entry["healthy"] and entry["pid"] not in (None, engine["pid"]) else None

    entry = wait_until(restarted, "the vLLM engine to be restarted", VLLM_START_S)
    assert entry["restarts"] == engine["restarts"] + 1 and entry["url"] == engine["url"]
    # the engine core the killed server left behind was reaped with its group
    wait_until(lambda: group_gone(engine["pid"]), "the killed engine's processes to exit", 30)
    assert complete(vllm_stack.gateway, prompt).choices[0].text == before
