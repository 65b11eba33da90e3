"""Requests the Serve proxy cannot answer get a JSON 503 a client can retry, not plain text.

When a replica dies with requests in flight (killed by the OOM killer, its node lost), Ray Serve's
HTTP proxy has no reply for them and uvicorn answers `500 Internal Server Error` in plain text. This
ASGI middleware runs in the proxy, loaded through Ray Serve's `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`
hook (`ray_runtime.SERVE_PROXY_CALLBACK`; a Ray our commands start sets it, the cluster manifests set
it on the head): a
request that ends without a reply gets `503` with `Retry-After` and the same `{"error": ...}` body
as every other error of the service. Replies the app sends pass unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.middleware import Middleware

from mmc_ray.serve.protocol import error_body

RETRY_AFTER_S = 1


class RetryableWhenUnanswered:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
        if not started:
            body = json.dumps(error_body(503, "the replica serving this request was lost before it answered; "
                                              "retry", code="replica_lost")).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode())]})
            await send({"type": "http.response.body", "body": body})


def middlewares() -> list[Middleware]:
    """What Ray Serve's proxy calls for the middlewares it wraps itself in."""
    return [Middleware(RetryableWhenUnanswered)]
