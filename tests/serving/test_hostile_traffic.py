"""Contract: no request, careless or hostile, harms another (real engine behind a real gateway).

* a request outside the ranges vLLM and OpenAI accept (seed beyond int64, temperature 9,
  logit_bias out of range, ...) is a 400 in the OpenAI shape naming the field, answered
  before it reaches a batch, and the good requests sent beside it all succeed;
* token-id prompts (``[1, 2, 3]``) are accepted as vLLM accepts them;
* 4xx answers never count against a backend: its breaker stays closed;
* a flood of huge prompts leaves ``/health`` answering and a small request served.
"""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow
ROUTE = "sovereign-lm"


@pytest.fixture(scope="module")
def stack(good_model_dir, tmp_path_factory, helpers):
    """One engine and one gateway routing ``sovereign-lm`` to it, started as users start them."""
    from serving.gateway.client import GatewayAdmin

    logs = tmp_path_factory.mktemp("hostile")
    engine_port, gateway_port = helpers.free_port(), helpers.free_port()
    engine = helpers.Proc(
        ["-m", "serving.engine", "--model", str(good_model_dir), "--served-model-name", ROUTE]
        + ["--host", "127.0.0.1", "--port", str(engine_port)],
        f"http://127.0.0.1:{engine_port}",
        logs / "engine.log",
        helpers.child_env(),
    ).start()
    gateway = helpers.Proc(
        ["-m", "serving.gateway", "--state", str(logs / "state.json")]
        + ["--host", "127.0.0.1", "--port", str(gateway_port)],
        f"http://127.0.0.1:{gateway_port}",
        logs / "gateway.log",
        helpers.child_env(MLOPS_GATEWAY_ADMIN_TOKEN=helpers.admin_token),
    ).start()
    admin = GatewayAdmin(gateway.url, helpers.admin_token)
    admin.put_backend("engine", engine.url)
    admin.put_route(ROUTE, "engine")
    yield engine, gateway, admin
    gateway.stop()
    engine.stop()


def _post(url: str, body: dict, timeout: float = 60.0) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=timeout)


GOOD = {"model": ROUTE, "prompt": "Q: sort", "max_tokens": 4, "temperature": 0}

POISON = [
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"temperature": 9}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logit_bias": {"5": 1000}}, "logit_bias"),
    ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"prompt": [1, 2, 99999999]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": {"text": "x"}}, "prompt"),
]


@pytest.mark.parametrize(("change", "field"), POISON, ids=[f for _, f in POISON])
def test_bad_field_is_a_400_naming_it(stack, change, field):
    engine, gateway, _ = stack
    answer = _post(gateway.url, {**GOOD, **change})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field, error


def test_one_poison_request_among_ten_good_fails_alone(stack):
    engine, gateway, admin = stack
    bodies = [{**GOOD, "seed": 2**64}] + [{**GOOD, "seed": i} for i in range(10)]
    for _ in range(3):  # three rounds: as many as it took to open the breaker before
        with cf.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: _post(gateway.url, b), bodies))
        assert answers[0].status_code == 400
        assert [a.status_code for a in answers[1:]] == [200] * 10
    assert admin.state()["breakers"]["engine"] == "closed"


def test_token_id_prompts_are_accepted_as_vllm_accepts_them(stack, good_model_dir):
    from transformers import AutoTokenizer

    _, gateway, _ = stack
    ids = AutoTokenizer.from_pretrained(good_model_dir)("Q: sort")["input_ids"]
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    by_text = client.completions.create(model=ROUTE, prompt="Q: sort", max_tokens=4, temperature=0)
    by_ids = client.completions.create(model=ROUTE, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)
    nested = client.completions.create(model=ROUTE, prompt=[ids], max_tokens=4, temperature=0)
    assert nested.choices[0].text == by_text.choices[0].text


def _json_values():
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    )


FIELDS = [
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "logit_bias",
    "stream",
    "stream_options",
]


def test_fuzzed_bodies_beside_good_traffic_harm_no_one(stack):
    """Random bodies (hypothesis) go to both endpoints while a steady stream of good requests
    runs beside them: no good request fails, no fuzz body gets a 5xx, the breaker stays
    closed and the gateway records no backend error (what canary health reads)."""
    import threading

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, gateway, admin = stack
    good_statuses: list[int] = []
    stop = threading.Event()

    def good_traffic() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                answer = client.post(f"{gateway.url}/v1/completions", json=GOOD)
                good_statuses.append(answer.status_code)

    bodies = st.fixed_dictionaries(
        {"model": st.sampled_from([ROUTE, ROUTE, ROUTE, "nope"]) | _json_values()},
        optional={name: _json_values() for name in FIELDS},
    )
    seen: list[int] = []

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    def fuzz(body, path):
        if isinstance(body.get("max_tokens"), int) or isinstance(body.get("n"), int):
            body.setdefault("max_tokens", 2)  # keep valid requests short on a shared CPU
        answer = httpx.post(f"{gateway.url}{path}", json=body, timeout=60)
        seen.append(answer.status_code)
        assert answer.status_code < 500, (body, answer.text)
        if answer.status_code >= 400:
            assert set(answer.json()["error"]) >= {"message", "type", "param"}

    workers = [threading.Thread(target=good_traffic) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        fuzz()
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert good_statuses and set(good_statuses) == {200}, sorted(set(good_statuses))
    assert 400 in seen  # the fuzzer did reach the validation
    assert admin.state()["breakers"]["engine"] == "closed"
    assert admin.backend_stats(ROUTE)["engine"].errors == 0


def test_huge_prompt_flood_keeps_liveness_and_serves_the_small_request(
    stack_factory, good_model_dir
):
    """30 concurrent 900k-character prompts through a supervised stack (``serving up``): the
    engine's ``/health`` keeps answering, the supervisor restarts nothing, and a small request
    sent meanwhile is served (or shed with a fast 429)."""
    import json
    import time

    home, stack_view = stack_factory(good_model_dir)
    gateway_url = stack_view["gateway"]["url"]
    ((name, engine_view),) = stack_view["engines"].items()
    huge = {**GOOD, "prompt": "Q: " + "x" * 900_000}

    health_times: list[float] = []
    small: list[tuple[int, float]] = []

    def watch_health() -> None:
        for _ in range(20):
            started = time.perf_counter()
            assert httpx.get(f"{engine_view['url']}/health", timeout=5).status_code == 200
            health_times.append(time.perf_counter() - started)
            time.sleep(0.1)

    def small_request() -> None:
        time.sleep(0.2)  # while the flood is in flight
        started = time.perf_counter()
        answer = _post(gateway_url, GOOD, timeout=30)
        small.append((answer.status_code, time.perf_counter() - started))

    with cf.ThreadPoolExecutor(34) as pool:
        flood = [pool.submit(_post, gateway_url, huge, 120) for _ in range(30)]
        watchers = [pool.submit(watch_health), pool.submit(small_request)]
        for future in watchers:
            future.result()
        statuses = [f.result().status_code for f in flood]
    assert set(statuses) <= {400, 429}, statuses  # refused, each alone, never a 5xx
    assert len(health_times) == 20
    assert small[0][0] in (200, 429)
    after = json.loads((home / "serving" / "stack.json").read_text())
    assert after["engines"][name]["restarts"] == 0
    assert after["engines"][name]["pid"] == engine_view["pid"]
