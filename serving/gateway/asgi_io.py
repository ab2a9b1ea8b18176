"""Raw ASGI plumbing shared by the gateway's proxies: the parsed call, answers, disconnects.

The proxied routes skip Starlette's ``Request``/``Response`` (see
:mod:`serving.gateway.proxy`), so reading the client's going away, writing a complete
answer and mapping an error to the OpenAI error shape are done here once, for the
dispatcher and the local proxy alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from observability.logs import REQUEST_ID_HEADER, request_id_var
from serving.errors import InvalidRequest, ServingError, error_body

JSON = b"application/json"
RID = REQUEST_ID_HEADER.encode("latin-1")


@dataclass(slots=True)
class Call:
    """One proxied OpenAI request, read and parsed once: the raw ``body`` (forwarded as is
    when the backend's model name matches), its ``payload``, the URL ``path``, whether the
    client asked for a ``stream``, and the request id sent on to the engine."""

    body: bytes
    payload: dict
    path: str
    stream: bool
    request_id: str | None = None


def parse_request(body: bytes) -> dict:
    """The OpenAI request body as a dict with a string ``model``, or InvalidRequest."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    if not isinstance(payload.get("model"), str):
        raise InvalidRequest("`model` is required and must be a string", "model")
    return payload


def media(content_type: bytes | None) -> str | None:
    return content_type.decode("latin-1") if content_type is not None else None


def error_bytes(exc: ServingError) -> bytes:
    return error_body(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)


def request_id() -> bytes:
    return (request_id_var.get() or "").encode("latin-1")


async def respond(
    send,
    status: int,
    content_type: bytes | None,
    body: bytes,
    request_id: bytes = b"",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [(b"content-length", b"%d" % len(body)), *extra]
    if request_id:
        headers.append((RID, request_id))
    if content_type is not None:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
