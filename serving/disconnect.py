"""A client that goes away: the engine and the gateway both stop work nobody waits for.

An ASGI server reports a closed client connection as an ``http.disconnect`` message on
``receive``. :func:`unless_gone` races the work against that message, so a queued request
of a client that gave up never takes a batch slot, and a proxied one closes its upstream
connection (the engine then drops it from its queue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
Receive = Callable[[], Awaitable[Mapping[str, Any]]]


class ClientGone(Exception):
    """The client disconnected before its answer could start."""


async def disconnected(receive: Receive) -> None:
    """Returns once the client has disconnected (any request body is read and dropped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(receive: Receive, work: Awaitable[T]) -> T:
    """``work``'s result; ``work`` cancelled and :class:`ClientGone` raised if the client
    leaves first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    # A cancelled task is done only once it has unwound: wait for that, so the work's own
    # clean-up (a queue place given back, an upstream connection closed) has run.
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone
