"""Contract: a message that kills the consumer process on every delivery (not an exception:
the process dies, as under the OOM killer) is delivered at most ``max_deliver`` times into a
live consumer, then lands in the dead-letter stream and the quarantine with a reason naming
the repeated failure, and every other record is committed exactly once: it never blocks the
stream and never drags its neighbours into the dead-letter stream. Real broker, real consumer
processes (restarted after each death, as a supervisor does), killed for real by a test-only
wrapper (``dying_consumer.py``) on the batch that holds the chosen record."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dying_consumer import MARKER  # noqa: E402
from stream_broker import (  # noqa: E402
    dead_letters,
    delete_streams,
    drained,
    publish,
    start_consumer,
    stream_rows,
    unique_config,
)

MAX_DELIVER = 3
KILLER = 10  # record index: stream sequence 11
WRAPPER = str(Path(__file__).parent / "dying_consumer.py")


def _records(path: Path, n: int) -> Path:
    lines = [{"text": f"{MARKER.decode()} {i}" if i == KILLER else f"record {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.slow
def test_message_that_kills_the_consumer_is_dead_lettered(tmp_path: Path) -> None:
    config = unique_config(max_deliver=MAX_DELIVER, ack_wait_s=2.0)
    home, log = tmp_path / "home", tmp_path / "consumer.log"
    consumer, deaths = None, []

    def start():
        return start_consumer(
            config, home, log, "--batch-messages", "10", "--batch-wait", "0.3",
            program=(WRAPPER,),
        )  # fmt: skip

    try:
        assert publish(config, _records(tmp_path / "records.jsonl", 40)).returncode == 0
        consumer = start()
        deadline = time.monotonic() + 300
        while not drained(config):
            assert time.monotonic() < deadline, "stream not drained:\n" + log.read_text()[-3000:]
            if consumer.poll() is not None:
                deaths.append(consumer.returncode)
                assert len(deaths) <= MAX_DELIVER + 2, log.read_text()[-3000:]
                consumer = start()
            time.sleep(0.3)
        assert consumer.poll() is None, "the last consumer must be alive and idle"
        letters = dead_letters(config)
    finally:
        if consumer is not None:
            consumer.kill()
            consumer.wait(timeout=30)
        delete_streams(config)

    # it died on each allowed delivery, and not once more
    assert deaths == [-9] * MAX_DELIVER

    [(data, headers)] = letters
    assert json.loads(data)["text"] == f"{MARKER.decode()} {KILLER}"
    assert headers["Mlops-Sequence"] == str(KILLER + 1)
    assert headers["Mlops-Deliveries"] == str(MAX_DELIVER + 1)
    assert f"on each of its {MAX_DELIVER} deliveries" in headers["Mlops-Reason"]

    corpus, quarantine = stream_rows(home / "lake", f"nats://{config.stream}")
    texts = corpus.column("text").to_pylist()
    assert sorted(texts) == sorted(f"record {i}" for i in range(40) if i != KILLER)
    quarantine = quarantine.to_pylist()
    assert [(q["source_row"], q["reason_code"]) for q in quarantine] == [
        (KILLER + 1, "dead_lettered")
    ]
    assert "died or stalled" in quarantine[0]["reason"]
    assert f"on each of its {MAX_DELIVER} deliveries" in quarantine[0]["reason"]
