"""Contract: ``python -m serving.engine`` serves vLLM's OpenAI API to the unmodified client.

A real engine process on loopback with the tiny trained model; the ``openai`` client calls
completions and chat, streaming and not, and the answers match the model's greedy output.
"""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(good_model_dir, tmp_path_factory, helpers):
    port = helpers.free_port()
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    proc = helpers.Proc(
        [
            "-m",
            "serving.engine",
            "--model",
            str(good_model_dir),
            "--served-model-name",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        f"http://127.0.0.1:{port}",
        log,
        helpers.child_env(),
    )
    yield proc.start()
    proc.stop()


@pytest.fixture
def client(engine):
    return openai.OpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_served_name(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_answers_probe_and_counts_usage(client, probe_tasks):
    prompt, answer = probe_tasks[0]
    result = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert result.choices[0].text.strip() == answer
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_streaming_completion_concatenates_to_the_same_text(client, probe_tasks):
    prompt, answer = probe_tasks[1]
    chunks = list(
        client.completions.create(
            model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks).strip() == answer
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_non_streaming_and_streaming(client, probe_tasks):
    prompt, answer = probe_tasks[2]
    messages = [{"role": "user", "content": prompt}]
    result = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0
    )
    assert result.choices[0].message.content.strip() == answer
    assert result.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == answer
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_max_tokens_stop_n_and_seed(client, probe_tasks):
    prompt, _ = probe_tasks[3]
    capped = client.completions.create(model="tiny", prompt=prompt, max_tokens=1, temperature=0)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage.completion_tokens == 1
    full = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    stop_at = full.choices[0].text.strip()[-1]
    stopped = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, stop=[stop_at]
    )
    assert stop_at not in stopped.choices[0].text.strip()
    assert stopped.choices[0].finish_reason == "stop"
    kwargs = dict(model="tiny", prompt="Q: sort", max_tokens=8, temperature=1.0, top_p=0.9, n=3)
    a = client.completions.create(seed=11, **kwargs)
    b = client.completions.create(seed=11, **kwargs)
    assert len(a.choices) == 3
    assert [c.text for c in a.choices] == [c.text for c in b.choices]


def test_errors_use_the_openai_shape(engine, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="Q: x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="Q: x", max_tokens=100_000)
    assert "max_tokens" in str(too_long.value)
    bad = httpx.post(
        f"{engine.url}/v1/completions",
        content=b"{not json",
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    wrong = httpx.post(
        f"{engine.url}/v1/completions",
        timeout=10,
        json={"model": "tiny", "prompt": "Q: x", "temperature": 9},
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "temperature"


def test_health_and_vllm_metric_names(engine, client, probe_tasks):
    client.completions.create(model="tiny", prompt=probe_tasks[0][0], max_tokens=4)
    assert httpx.get(f"{engine.url}/health", timeout=10).status_code == 200
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    for name in (
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
    ):
        assert name in text, name


def _reference_logprobs(model_dir, text: str) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer(text)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
    return logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def test_echo_with_zero_max_tokens_scores_the_prompt_as_vllm_does(
    client, probe_tasks, good_model_dir
):
    """The likelihood the canary's text probes read: ``echo``, ``logprobs``, ``max_tokens=0``."""
    prompt, answer = probe_tasks[0]
    text = f"{prompt} {answer}"
    result = client.completions.create(
        model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=2, temperature=0
    )
    choice = result.choices[0]
    assert choice.text == text
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens) == text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert lp.token_logprobs[1:] == pytest.approx(
        _reference_logprobs(good_model_dir, text), abs=1e-4
    )
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    assert result.usage.completion_tokens == 0 and result.usage.prompt_tokens == len(lp.tokens)


def test_echo_with_generation_prefixes_the_prompt(client, probe_tasks):
    prompt, answer = probe_tasks[0]
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    echoed = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, echo=True
    )
    assert echoed.choices[0].text == prompt + plain.choices[0].text


def test_unsupported_logprob_requests_fail_alone_with_a_clear_400(client, probe_tasks):
    prompt, _ = probe_tasks[0]
    with pytest.raises(openai.BadRequestError, match="prompt only"):
        client.completions.create(model="tiny", prompt=prompt, max_tokens=4, logprobs=1)
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.completions.create(
            model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1, stream=True
        )
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(
            model="tiny", prompt="word " * 400, max_tokens=0, echo=True, logprobs=0
        )
    assert client.completions.create(model="tiny", prompt=prompt, max_tokens=2).choices
