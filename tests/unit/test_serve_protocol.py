"""The service's OpenAI shapes as pure functions: error bodies, the model check, the chunk stream."""

import json

import pytest

from mmc_ray.engine_protocol import Completion, GenerationResult
from mmc_ray.serve.protocol import (
    ModelNotFound,
    chat_completion,
    chat_completion_events,
    error_body,
    requested_adapter,
)

RESULT = GenerationResult((Completion("The answer is 3.", "stop", 6, logprobs=(-0.1,) * 6),
                           Completion("", "length", 0)), prompt_tokens=40)


def test_error_bodies_have_openais_shape():
    assert error_body(404, "no such model", "model", "model_not_found") == {"error": {
        "message": "no such model", "type": "invalid_request_error", "param": "model", "code": "model_not_found",
        "field": "model"}}
    assert error_body(401, "token")["error"]["type"] == "authentication_error"
    assert error_body(500, "boom")["error"] == {"message": "boom", "type": "server_error", "param": None,
                                                "code": None}


def test_only_the_served_model_one_of_its_adapters_or_none_is_accepted():
    assert requested_adapter(None, "mmc-critic", []) is None
    assert requested_adapter("mmc-critic", "mmc-critic", ["r1"]) is None  # the server's default
    assert requested_adapter("r1", "mmc-critic", ["r1", "r2"]) == "r1"
    with pytest.raises(ModelNotFound) as refused:
        requested_adapter("gpt-4o", "mmc-critic", ["r1"])
    assert (refused.value.status, refused.value.code, refused.value.field) == (404, "model_not_found", "model")
    assert "'mmc-critic', 'r1'" in str(refused.value)


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_stream_says_what_the_whole_completion_says(include_usage):
    whole = chat_completion(RESULT, "m", "id1", 7)
    events = list(chat_completion_events(RESULT, "m", "id1", 7, include_usage))
    assert events[-1] == "data: [DONE]\n\n" and all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    for choice in whole["choices"]:
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == choice["index"]]
        assert mine[0]["delta"]["role"] == "assistant"
        assert "".join(c["delta"].get("content", "") for c in mine) == choice["message"]["content"]
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + [choice["finish_reason"]]
    assert ("usage" in chunks[0]) == include_usage
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
        assert all(c["usage"] is None for c in chunks[:-1])
