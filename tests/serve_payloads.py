"""What the critic-service tests send: one synthetic problem with its image, a /v1/critique body, and
a free local port, and critiques sent across a redeploy (tests/ray/test_serve.py on the hf backend,
tests/vllm_tier/test_serve_llm.py on vLLM, tests/unit/test_serve_llm_mapping.py)."""

import base64
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mmc_ray.tasks.synthetic import generate_problems

PROBLEM = next(generate_problems(1, seed=4))
B64_IMAGE = base64.b64encode(PROBLEM.image).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def critique_body(**overrides) -> dict:
    body = {"question": PROBLEM.question, "steps": ["Count the shapes: 3.", "So the answer is 3."],
            "answer": "3", "image": B64_IMAGE, "max_tokens": 16}
    return {**body, **overrides}


def replies_across_redeploy(client, url: str, redeploy: Callable[[], None], swapped: Callable[[], bool],
                            timeout_s: float, every_s: float, never: str, sent_after: int = 0,
                            model: str | None = None) -> list:
    """Critiques (of `model`, when given) in flight before, during and after `redeploy()`, sent until
    `swapped()` holds (an assertion failure saying `never` after `timeout_s`): the reply to each."""
    body = {**critique_body(max_tokens=8), **({"model": model} if model else {})}
    with ThreadPoolExecutor(4) as pool:
        def send():
            return pool.submit(client.post, f"{url}/v1/critique", json=body)

        futures = [send() for _ in range(16)]
        redeploy()
        futures += [send() for _ in range(sent_after)]
        deadline = time.time() + timeout_s
        while not swapped():
            assert time.time() < deadline, never
            futures.append(send())
            time.sleep(every_s)
        return [f.result() for f in futures]


def replies_across_a_kill(client, url: str, body: dict, engine, request, kill: Callable[[], None],
                          clients: int = 4, ready_timeout_s: float = 120) -> tuple[list, list, int]:
    """`clients` plain clients post `body` to /v1/critique and `engine` generates `request` four at a
    time, each sending again as soon as it is answered; once every one has been answered, `kill()`
    runs, half a second after each client sent its next request, so requests are in flight when it
    lands (a fixed sleep from the start raced with fast replies once in CI). Returns the plain replies, the engine's results, and how many plain requests
    were open across the kill."""
    import threading

    stop, ready, spans, results = threading.Event(), threading.Barrier(clients + 2), [], []
    killed_at = []

    opened = threading.Semaphore(0)

    def post() -> None:
        sent = time.monotonic()
        opened.release()
        reply = client.post(f"{url}/v1/critique", json=body)
        spans.append((sent, reply, time.monotonic()))

    def keep_posting() -> None:
        post()
        ready.wait(ready_timeout_s)
        while not stop.is_set():
            post()

    def keep_generating() -> None:
        results.extend(engine.generate([request] * 4))
        ready.wait(ready_timeout_s)
        while not stop.is_set():
            results.extend(engine.generate([request] * 4))

    with ThreadPoolExecutor(clients + 1) as pool:
        running = [pool.submit(keep_posting) for _ in range(clients)] + [pool.submit(keep_generating)]
        ready.wait(ready_timeout_s)
        for _ in range(2 * clients):  # the first requests and the ones after the barrier
            opened.acquire(timeout=ready_timeout_s)
        time.sleep(0.5)  # they reach the replica
        killed_at.append(time.monotonic())
        kill()
        stop.set()
        for finished in running:
            finished.result()
    open_across = sum(sent < killed_at[0] < answered for sent, _, answered in spans)
    return [reply for _, reply, _ in spans], results, open_across


def openai_chat_messages() -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "text", "text": PROBLEM.question},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + B64_IMAGE}}]}]


def check_with_the_official_openai_client(base_url: str, api_key: str = "unused") -> None:
    """What an OpenAI user does, with the official `openai` package, sync and async: list the models,
    stream a greedy chat (the streamed text is the unstreamed text; usage in the last chunk when
    asked), and get OpenAI's errors for an unknown model and a malformed request."""
    import asyncio

    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)
    served, *_adapters = [m.id for m in client.models.list()]  # the base first, then its adapters
    assert served == "mmc-critic", served
    ask = {"model": served, "messages": openai_chat_messages(), "max_tokens": 12, "temperature": 0, "seed": 3}
    whole = client.chat.completions.create(**ask)
    assert whole.object == "chat.completion" and whole.model == served and whole.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.chat.completions.create(**ask, stream=True))
    assert plain[-1].choices and all(c.usage is None for c in plain)  # no usage chunk unless asked

    try:
        client.chat.completions.create(**{**ask, "model": "gpt-4o"})
        raise AssertionError("an unknown model was answered")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.code == "model_not_found" and e.param == "model", e.body
        assert e.type == "invalid_request_error" and "gpt-4o" in e.message
    try:
        client.chat.completions.create(**{**ask, "max_tokens": 10 ** 6})
        raise AssertionError("an oversized max_tokens was answered")
    except openai.UnprocessableEntityError as e:
        assert e.param == "max_tokens" and e.type == "invalid_request_error", e.body

    async def streamed() -> str:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300) as aclient:
            stream = await aclient.chat.completions.create(**ask, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(streamed()) == whole.choices[0].message.content
