"""Contract: the embedded engine batches concurrent requests into shared forward passes, and
batching changes nothing in the answers (left padding, per-request sampling parameters).
A request that breaks the engine fails alone (its batch-mates complete); the queue is
bounded, and what it cannot take is refused at once with ``Overloaded``; token-id prompts
and ``logit_bias`` are checked against the vocabulary.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.engine.admission import Admission, AdmissionLimits
from serving.engine.batching import BatchConfig, BatchingEngine, EngineFailure
from serving.engine.protocol import ChoiceDelta, SamplingParams, Usage
from serving.errors import InvalidRequest, Overloaded


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


def test_a_request_that_breaks_the_engine_fails_alone(engine):
    # a seed past uint64 makes torch.Generator raise inside the batch; the HTTP boundary
    # refuses it (400), so only a direct caller can still send it: the engine's last line
    poison = SamplingParams(max_tokens=4, temperature=1.0, seed=2**64)
    good = [SamplingParams(max_tokens=4, temperature=1.0, seed=i) for i in range(10)]

    async def together():
        calls = [run(engine, "Q: sort", p) for p in [poison, *good]]
        return await asyncio.gather(*calls, return_exceptions=True)

    failed, *answers = asyncio.run(together())
    assert isinstance(failed, EngineFailure)
    assert all(not isinstance(a, BaseException) for a in answers), answers
    assert all(a[2].completion_tokens >= 1 for a in answers)


def test_vocabulary_is_checked_for_token_ids_and_logit_bias(engine):
    tokens = engine.tokenizer("Q: sort")["input_ids"]
    by_ids = asyncio.run(run(engine, tokens, SamplingParams(max_tokens=4, temperature=0)))
    by_text = asyncio.run(run(engine, "Q: sort", SamplingParams(max_tokens=4, temperature=0)))
    assert by_ids[0] == by_text[0]
    with pytest.raises(InvalidRequest) as error:
        asyncio.run(run(engine, [1, 10**9], SamplingParams(max_tokens=2)))
    assert error.value.param == "prompt"
    with pytest.raises(InvalidRequest) as error:
        asyncio.run(run(engine, "Q: x", SamplingParams(max_tokens=2, logit_bias=((10**9, 1.0),))))
    assert error.value.param == "logit_bias"
    # a +100 bias on one token makes greedy decoding pick it every step
    eos = sorted(engine.eos_ids)
    token = next(t for t in range(len(engine.tokenizer)) if t not in eos and t > 2)
    forced = SamplingParams(max_tokens=3, temperature=0, logit_bias=((token, 100.0),))
    texts, _, usage = asyncio.run(run(engine, "Q: sort", forced))
    assert texts[0] == engine.tokenizer.decode([token] * 3, skip_special_tokens=True)


def test_huge_text_prompt_is_refused_before_tokenizing(engine):
    with pytest.raises(InvalidRequest) as error:
        asyncio.run(run(engine, "x" * 900_000, SamplingParams(max_tokens=2)))
    assert error.value.param == "prompt" and "characters" in error.value.message


def test_full_queue_sheds_with_overloaded_and_recovers(good_model_dir):
    limits = AdmissionLimits(max_queued_requests=2)
    small = BatchingEngine(good_model_dir, "tiny", BatchConfig(max_batch_size=1, admission=limits))
    small.start()
    try:

        async def burst():
            params = SamplingParams(max_tokens=8, temperature=0)
            calls = [run(small, "Q: sort", params) for _ in range(12)]
            return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(burst())
        shed = [r for r in results if isinstance(r, Overloaded)]
        served = [r for r in results if not isinstance(r, BaseException)]
        assert shed and served and len(shed) + len(served) == 12
        assert all(e.retry_after_s >= 1 for e in shed)
        assert small.admission.queued_requests == 0  # every place was given back
        assert asyncio.run(run(small, "Q: sort", SamplingParams(max_tokens=2)))[2]
    finally:
        small.stop()


def test_queue_is_bounded_by_the_wait_it_adds():
    limits = AdmissionLimits(max_queue_wait_s=1.5)
    admission = Admission(
        limits,
        max_model_len=64,
        max_batch_size=2,
        vocab_size=10,
        max_chars_per_token=4,
        tokenize=lambda text: [1] * len(text),
    )
    admission.note_batch(1.0)
    tickets = [admission.admit(4) for _ in range(4)]  # two full batches ahead: 2 s of wait
    with pytest.raises(Overloaded) as shed:
        admission.check_room()
    assert shed.value.retry_after_s == 2.0
    admission.release(tickets[0])
    admission.release(tickets[0])  # released once only
    admission.check_room()  # one full batch ahead: 1 s, under the limit
    assert admission.queued_requests == 3


def test_a_request_whose_client_went_away_is_dropped_from_the_queue(good_model_dir):
    single = BatchingEngine(good_model_dir, "tiny", BatchConfig(max_batch_size=1))
    single.start()
    try:

        async def scenario():
            no_eos = tuple((t, -100.0) for t in sorted(single.eos_ids))  # runs all 100 steps
            params = SamplingParams(max_tokens=100, temperature=0, logit_bias=no_eos)
            long = asyncio.create_task(run(single, "Q: sort", params))
            while single._running < 1:  # the long request holds the only batch slot
                await asyncio.sleep(0.01)
            queued = asyncio.create_task(run(single, "Q: sort", SamplingParams(max_tokens=4)))
            deadline = time.monotonic() + 10
            while single.admission.queued_requests < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert single.admission.queued_requests == 1 and not long.done()
            queued.cancel()  # what the HTTP layer does when the client disconnects
            await asyncio.sleep(0)
            freed = single.admission.queued_requests
            await long
            return freed

        assert asyncio.run(scenario()) == 0  # its place in the queue was given back at once
        deadline = time.monotonic() + 10
        while single.dropped < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert single.dropped == 1  # the scheduler skipped it: no batch ran for it
    finally:
        single.stop()
