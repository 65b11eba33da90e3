"""OpenAIEngine against a small OpenAI-compatible server on 127.0.0.1 (stdlib, in a thread)."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from mmc_ray.config import EngineConfig, OpenAIConfig
from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.engines.factory import build_engine
from mmc_ray.engines.openai import OpenAIEngine

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


class Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list] = []
    unavailable: ClassVar[dict] = {}  # text -> how many more times to answer 503 before answering

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.seen.append((self.path, self.headers.get("Authorization"), body))
        last_text = [p for m in body["messages"] if isinstance(m["content"], list)
                     for p in m["content"] if p["type"] == "text"]
        text = last_text[-1]["text"] if last_text else ""
        if "explode" in text or "reject" in text or Handler.unavailable.get(text, 0) > 0:
            if text in Handler.unavailable:
                Handler.unavailable[text] -= 1
            self.send_response(400 if "reject" in text else 503 if text in Handler.unavailable else 500)
            if text in Handler.unavailable:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        images = sum(p["type"] == "image_url" for m in body["messages"] if isinstance(m["content"], list)
                     for p in m["content"])
        reply = {"choices": [{"index": i, "message": {"role": "assistant", "content": f"sample {i} images={images}"},
                              "finish_reason": "length" if body["max_tokens"] < 5 else "stop"}
                             for i in range(body["n"])],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 6 * body["n"]}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    Handler.seen, Handler.unavailable = [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def request(text, images=(), **kw):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return GenerationRequest(messages=({"role": "user", "content": content},), images=tuple(images), **kw)


def test_requests_results_and_images(server, monkeypatch):
    monkeypatch.setenv("MMC_TEST_KEY", "s3cret")
    engine = build_engine(EngineConfig(kind="openai", openai=OpenAIConfig(base_url=server, served_model="critic",
                                                                     api_key_env="MMC_TEST_KEY")))
    assert isinstance(engine, OpenAIEngine)
    results = engine.generate([request("hi", n=2, seed=3, stop=("\n",)),
                               request("look", images=[PNG], max_new_tokens=2),
                               request("go on", assistant_prefix="Step 1:")])
    assert [c.text for c in results[0].completions] == ["sample 0 images=0", "sample 1 images=0"]
    assert results[0].completions[0].completion_tokens == 6 and results[0].prompt_tokens == 11
    assert results[1].completions[0].text == "sample 0 images=1"
    assert results[1].completions[0].finish_reason == "length"
    bodies = {b["messages"][0]["content"][-1]["text"]: (path, auth, b) for path, auth, b in Handler.seen}
    path, auth, body = bodies["hi"]
    assert path == "/v1/chat/completions" and auth == "Bearer s3cret"
    assert (body["model"], body["n"], body["seed"], body["stop"]) == ("critic", 2, 3, ["\n"])
    image_part = bodies["look"][2]["messages"][0]["content"][0]
    assert image_part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    prefixed = bodies["go on"][2]
    assert prefixed["messages"][-1] == {"role": "assistant", "content": "Step 1:"}
    assert prefixed["continue_final_message"] is True


def sent(text):
    return sum(b["messages"][0]["content"][-1]["text"] == text for _, _, b in Handler.seen)


def test_a_failing_request_is_an_error_for_that_request_only_after_its_retries(server):
    engine = OpenAIEngine(server, "m", max_retries=2, retry_backoff_s=0.01)
    ok, bad, refused = engine.generate([request("fine"), request("explode", n=2), request("reject")])
    assert ok.completions[0].finish_reason == "stop"
    assert [c.finish_reason for c in bad.completions] == ["error", "error"]
    assert "HTTP 500" in bad.completions[0].error and "HTTP 400" in refused.completions[0].error
    assert (sent("fine"), sent("explode"), sent("reject")) == (1, 3, 1)  # a 400 is the client's: not retried
    assert engine.retries == 2


def test_a_server_that_is_unavailable_for_a_while_is_retried_until_it_answers(server):
    Handler.unavailable["come back"] = 3
    engine = OpenAIEngine(server, "m", max_retries=4, retry_backoff_s=5.0)  # Retry-After: 0 wins over 5 s
    (result,) = engine.generate([request("come back")])
    assert result.completions[0].text == "sample 0 images=0"
    assert sent("come back") == 4 and engine.retries == 3


def test_unreachable_server_gives_error_completions():
    engine = OpenAIEngine("http://127.0.0.1:9/v1", "m", timeout_s=2, max_retries=1, retry_backoff_s=0.01)
    (result,) = engine.generate([request("hi")])
    assert result.completions[0].finish_reason == "error"
    assert "ConnectError" in result.completions[0].error and engine.retries == 1


def test_checked_in_openapi_spec_is_current():
    from pathlib import Path

    from mmc_ray.serve.app import openapi_spec

    path = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
    assert path.read_text() == openapi_spec(), "regenerate: mmc-ray serve --write-openapi docs/openapi.json"
