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
