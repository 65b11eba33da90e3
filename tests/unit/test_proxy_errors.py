"""The Serve proxy's middleware (mmc_ray.serve.proxy_errors) on plain ASGI apps: a request that ends
without a reply (its replica lost) gets the JSON 503 to retry; replies the app sends pass unchanged."""

import asyncio
import json

import pytest

from mmc_ray.serve.proxy_errors import RetryableWhenUnanswered


def call(app) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(RetryableWhenUnanswered(app)({"type": "http", "path": "/v1/critique"}, receive, send))
    return sent


def test_a_request_whose_replica_died_gets_a_json_503_to_retry():
    async def replica_lost(scope, receive, send):
        raise RuntimeError("ActorDiedError: the replica died")

    start, body = call(replica_lost)
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert (b"content-type", b"application/json") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "replica_lost"


def test_an_app_that_returns_without_replying_gets_the_503_too():
    async def silent(scope, receive, send):
        return None

    assert call(silent)[0]["status"] == 503


def test_replies_pass_unchanged_and_a_failure_after_the_reply_started_is_not_masked():
    async def answers(scope, receive, send):
        await send({"type": "http.response.start", "status": 422, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    assert [m.get("status") for m in call(answers)] == [422, None]

    async def fails_midway(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        call(fails_midway)
