"""Contract: the embedded engine batches concurrent requests into shared forward passes, and
batching changes nothing in the answers (left padding, per-request sampling parameters).
"""

from __future__ import annotations

import asyncio

import pytest

from serving.engine.batching import BatchConfig, BatchingEngine
from serving.engine.protocol import ChoiceDelta, SamplingParams, Usage
from serving.errors import InvalidRequest


@pytest.fixture(scope="module")
def engine(good_model_dir):
    engine = BatchingEngine(good_model_dir, "tiny", BatchConfig(batch_wait_s=0.02))
    engine.start()
    yield engine
    engine.stop()


async def run(engine, prompt, params) -> tuple[dict[int, str], dict[int, str], Usage]:
    texts, reasons, usage = {}, {}, None
    async for item in engine.generate(prompt, params):
        if isinstance(item, ChoiceDelta):
            texts[item.index] = texts.get(item.index, "") + item.text
            if item.finish_reason:
                reasons[item.index] = item.finish_reason
        else:
            usage = item
    return texts, reasons, usage


def test_concurrent_requests_share_a_batch_and_answer_as_if_alone(engine, probe_tasks):
    greedy = SamplingParams(max_tokens=10, temperature=0)
    alone = [asyncio.run(run(engine, p, greedy))[0][0] for p, _ in probe_tasks]
    before = engine.batches_run

    async def together():
        return await asyncio.gather(*[run(engine, p, greedy) for p, _ in probe_tasks])

    results = asyncio.run(together())
    assert [r[0][0] for r in results] == alone
    assert [r[0][0].strip() for r in results] == [a for _, a in probe_tasks]
    assert engine.batches_run - before < len(probe_tasks)  # fewer forward loops than requests
    assert engine.largest_batch >= 2


def test_per_request_sampling_in_one_batch(engine, probe_tasks):
    prompt = probe_tasks[0][0]
    seeded = SamplingParams(max_tokens=8, temperature=1.5, seed=5, n=2)
    greedy = SamplingParams(max_tokens=8, temperature=0)
    capped = SamplingParams(max_tokens=1, temperature=0)

    async def mixed():
        return await asyncio.gather(
            run(engine, prompt, seeded),
            run(engine, prompt, greedy),
            run(engine, prompt, capped),
            run(engine, prompt, seeded),
        )

    first_seeded, plain, short, second_seeded = asyncio.run(mixed())
    assert first_seeded[0] == second_seeded[0]  # same seed, same text, even in one batch
    assert len(first_seeded[0]) == 2
    assert plain[0][0].strip() == probe_tasks[0][1]
    assert short[1] == {0: "length"} and short[2].completion_tokens == 1
    assert first_seeded[2].completion_tokens <= 16


def test_stop_strings_cut_the_text(engine, probe_tasks):
    prompt, answer = next((p, a) for p, a in probe_tasks if " " in a)
    stop = answer.split(" ")[1]
    texts, reasons, _ = asyncio.run(
        run(engine, prompt, SamplingParams(max_tokens=10, temperature=0, stop=(stop,)))
    )
    assert texts[0].strip() == answer.split(" ")[0] and reasons[0] == "stop"


def test_rejects_requests_beyond_the_context(engine):
    with pytest.raises(InvalidRequest) as error:
        asyncio.run(run(engine, "Q: x", SamplingParams(max_tokens=10_000)))
    assert error.value.param == "max_tokens"
    with pytest.raises(InvalidRequest):
        SamplingParams(top_p=0)
