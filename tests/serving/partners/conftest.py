"""Fixtures for partner tests: fake partner servers of each kind on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testing.partners.fake import FakePartnerServer


@pytest.fixture
def fake_partner() -> Iterator[Callable[..., FakePartnerServer]]:
    """Start a fake partner: ``fake_partner("anthropic", name="claude", key="K")``.

    The returned server has ``url``, ``base_url`` (what a PartnerSpec of its kind takes),
    ``set_mode(mode, **params)``, ``counts()``, ``stop()`` (connection refused from then on)
    and ``start()`` (serve again on the same port). All are stopped on teardown.
    """
    started: list[FakePartnerServer] = []

    def _start(
        kind: str, name: str | None = None, key: str | None = None, port: int | None = None
    ) -> FakePartnerServer:
        server = FakePartnerServer(kind, name or f"fake-{kind}", key=key, port=port)
        started.append(server)
        return server.start()

    yield _start
    for server in started:
        server.stop()
