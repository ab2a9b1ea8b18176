"""Contract: the quorum asks real partners through the real gateway and never guesses.

Fake partners of each wire format sit behind the gateway of a real serving stack; each
answers ``partner:<name> says hi``, so a judge named ``judge-yes-…`` votes "yes", one named
``judge-no-…`` votes "no", and ``judge-maybe`` answers nothing the parser accepts. Health is
the gateway's: a partner made to fail is ``down`` there and is not asked at all.
"""

import pytest

from serving.partners.quorum import QuorumConfig, ask

QUESTION = "Q: what comes after 41? A: 42. Is this correct?"
CHOICES = ("yes", "no")

pytestmark = pytest.mark.slow


@pytest.fixture
def judges(partner_world):
    return partner_world(
        judge_yes_a="anthropic", judge_yes_b="openai", judge_no_c="gemini", judge_maybe="openai"
    )


def vote(world, *voters: str, quorum: int = 2):
    config = QuorumConfig(quorum=quorum, voters=voters)
    return ask(world.admin.url, world.view(), QUESTION, CHOICES, config)


def test_majority_tie_garbage_and_too_few_healthy_voters(judges) -> None:
    majority = vote(judges, "judge-yes-a", "judge-yes-b", "judge-no-c")
    assert majority.answer == "yes", majority
    assert majority.votes == {"judge-yes-a": "yes", "judge-yes-b": "yes", "judge-no-c": "no"}
    assert majority.reason == "yes: 2 of 3 voters"

    tie = vote(judges, "judge-yes-a", "judge-no-c")
    assert tie.answer is None and "no strict majority" in tie.reason
    assert tie.votes == {"judge-yes-a": "yes", "judge-no-c": "no"}

    garbage = vote(judges, "judge-yes-a", "judge-yes-b", "judge-maybe")
    assert garbage.answer == "yes" and garbage.votes["judge-maybe"] is None
    outvoted = vote(judges, "judge-yes-a", "judge-maybe")
    assert outvoted.answer is None and outvoted.votes == {"judge-yes-a": "yes", "judge-maybe": None}

    judges.partners["judge-yes-b"].set_mode("error_500")
    judges.wait_state("judge-yes-b", "down")
    too_few = vote(judges, "judge-yes-a", "judge-yes-b")
    assert too_few.answer is None
    assert too_few.reason == "no verdict: 1 healthy voter(s) (judge-yes-a), quorum is 2"
    assert too_few.votes == {}  # nobody is asked without a quorum
