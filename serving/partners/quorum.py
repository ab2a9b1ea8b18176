"""Quorum across partners: several judges, one majority answer, or no verdict.

A judgement question (is this answer correct? which of these labels fits?) is sent, the same
words to each voter, through the gateway with the unmodified ``openai`` client: a partner's
name is a valid ``model`` there and reaches that partner only, without fallback, so each
vote really is that partner's. The sovereign model may vote too (``include_sovereign``).

Each answer is parsed to exactly one of the given choices; anything else (no choice named,
several named, an error, a timeout) is an abstention, never a guess. The verdict is the
choice named by a strict majority of the voters asked, abstentions included, and only when
at least ``quorum`` healthy voters were asked. Voter health is the gateway's own view
(``GET /admin/partners``): a degraded or down partner is not asked at all.

:func:`tally` and :func:`parse_choice` are pure; :func:`ask` does the I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import openai

SOVEREIGN_ROUTE = "sovereign-lm"
_SYSTEM = "You are a strict judge. Reply with exactly one of the allowed answers and nothing else."


@dataclass(frozen=True)
class Verdict:
    answer: str | None  # the majority choice; None means "no verdict"
    votes: dict[str, str | None]  # voter -> parsed choice, None for an abstention
    reason: str


@dataclass(frozen=True)
class QuorumConfig:
    quorum: int = 2  # fewer healthy voters than this: no verdict
    include_sovereign: bool = False
    max_tokens: int = 8
    timeout_s: float = 30.0
    max_retries: int = 1
    voters: tuple[str, ...] = field(default_factory=tuple)  # empty: every healthy partner

    def __post_init__(self) -> None:
        if self.quorum < 1:
            raise ValueError(f"quorum must be >= 1, got {self.quorum}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def parse_choice(text: str | None, choices: Sequence[str]) -> str | None:
    """The one choice ``text`` names as a whole word (case and punctuation ignored); ``None``
    when it names none or more than one."""
    if not text:
        return None
    padded = f" {_normalise(text)} "
    named = {c for c in choices if _normalise(c) and f" {_normalise(c)} " in padded}
    return named.pop() if len(named) == 1 else None


def tally(votes: Mapping[str, str | None], quorum: int) -> Verdict:
    """Majority of ``votes`` (every voter asked, abstentions as ``None``)."""
    votes = dict(votes)
    if len(votes) < quorum:
        return Verdict(
            None, votes, f"no verdict: {len(votes)} healthy voter(s), quorum is {quorum}"
        )
    counts = Counter(v for v in votes.values() if v is not None)
    if not counts:
        return Verdict(None, votes, f"no verdict: all {len(votes)} voters abstained")
    top, n = counts.most_common(1)[0]
    if n * 2 <= len(votes):
        summary = ", ".join(f"{c}={k}" for c, k in counts.most_common())
        abstained = len(votes) - sum(counts.values())
        return Verdict(
            None,
            votes,
            f"no verdict: no strict majority of {len(votes)} voters ({summary}, "
            f"{abstained} abstained)",
        )
    return Verdict(top, votes, f"{top}: {n} of {len(votes)} voters")


def healthy_partners(partners_view: Mapping) -> list[str]:
    """Names of partners the gateway reports ``healthy``, from ``GET /admin/partners``."""
    partners = partners_view.get("partners") or {}
    return sorted(name for name, p in partners.items() if p.get("state") == "healthy")


def prompt(question: str, choices: Sequence[str]) -> str:
    return f"{question}\n\nAnswer with exactly one of: {', '.join(choices)}."


def _vote(client: openai.OpenAI, voter: str, text: str, choices, config: QuorumConfig):
    try:
        answer = client.chat.completions.create(
            model=voter,
            messages=[{"role": "system", "content": _SYSTEM}, {"role": "user", "content": text}],
            max_tokens=config.max_tokens,
            temperature=0,
        )
    except openai.OpenAIError:  # an unreachable or failing voter abstains
        return None
    if not answer.choices:
        return None
    return parse_choice(answer.choices[0].message.content, choices)


def ask(
    gateway_url: str,
    partners_view: Mapping,
    question: str,
    choices: Sequence[str],
    config: QuorumConfig | None = None,
) -> Verdict:
    """Ask every healthy voter ``question`` through the gateway at ``gateway_url`` and tally.

    ``partners_view`` is the gateway's ``GET /admin/partners`` answer; ``config.voters``
    narrows the electorate to the named partners (still only the healthy ones).
    """
    config = config or QuorumConfig()
    if len(set(choices)) < 2:
        raise ValueError(f"a judgement needs at least two distinct choices, got {list(choices)}")
    voters = healthy_partners(partners_view)
    if config.voters:
        voters = [v for v in voters if v in config.voters]
    if config.include_sovereign:
        voters.append(SOVEREIGN_ROUTE)
    if len(voters) < config.quorum:  # nobody is asked: a partial vote could only mislead
        named = ", ".join(voters) or "none"
        return Verdict(
            None,
            {},
            f"no verdict: {len(voters)} healthy voter(s) ({named}), quorum is {config.quorum}",
        )
    client = openai.OpenAI(
        base_url=f"{gateway_url.rstrip('/')}/v1",
        api_key="unused",  # the gateway holds each partner's key
        timeout=config.timeout_s,
        max_retries=config.max_retries,
    )
    text = prompt(question, choices)
    with ThreadPoolExecutor(max_workers=len(voters)) as pool:
        answers = pool.map(lambda v: _vote(client, v, text, choices, config), voters)
        votes = dict(zip(voters, answers, strict=True))
    return tally(votes, config.quorum)
