"""Contract: the quorum's pure parts (serving/partners/quorum.py): answers parse to one of
the choices or abstain; a strict majority of the voters asked decides; fewer voters than the
quorum, a tie, or too many abstentions give no verdict, never a guess."""

import pytest

from serving.partners.quorum import QuorumConfig, healthy_partners, parse_choice, tally

CHOICES = ("yes", "no")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("  NO!  ", "no"),
        ("The answer is yes", "yes"),
        ("yes or no", None),  # both named: no choice
        ("yesterday", None),  # not a whole word
        ("maybe", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_choice(text, expected) -> None:
    assert parse_choice(text, CHOICES) == expected


def test_strict_majority_decides() -> None:
    verdict = tally({"a": "yes", "b": "yes", "c": "no"}, quorum=2)
    assert verdict.answer == "yes" and verdict.reason == "yes: 2 of 3 voters"
    assert verdict.votes == {"a": "yes", "b": "yes", "c": "no"}


def test_a_tie_is_no_verdict() -> None:
    verdict = tally({"a": "yes", "b": "no"}, quorum=2)
    assert verdict.answer is None and "no strict majority of 2 voters" in verdict.reason


def test_abstentions_count_against_the_majority() -> None:
    assert tally({"a": "yes", "b": None}, quorum=2).answer is None
    assert tally({"a": "yes", "b": "yes", "c": None}, quorum=2).answer == "yes"
    assert "all 2 voters abstained" in tally({"a": None, "b": None}, quorum=2).reason


def test_too_few_voters_is_no_verdict_even_when_unanimous() -> None:
    verdict = tally({"a": "yes"}, quorum=2)
    assert verdict.answer is None
    assert verdict.reason == "no verdict: 1 healthy voter(s), quorum is 2"


def test_only_healthy_partners_vote() -> None:
    view = {
        "partners": {
            "a": {"state": "healthy"},
            "b": {"state": "degraded"},
            "c": {"state": "down"},
            "d": {"state": "healthy"},
        }
    }
    assert healthy_partners(view) == ["a", "d"]
    assert healthy_partners({}) == []


def test_bad_quorum_config_is_refused() -> None:
    with pytest.raises(ValueError, match="quorum must be >= 1"):
        QuorumConfig(quorum=0)
