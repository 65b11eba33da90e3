"""What the critic-service tests send: one synthetic problem with its image, a /v1/critique body, and
a free local port, and critiques sent across a redeploy (tests/ray/test_serve.py on the hf backend,
tests/vllm_tier/test_serve_llm.py on vLLM, tests/unit/test_serve_llm_mapping.py)."""

import base64
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mmc_ray.tasks.generator import generate_problems

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


def statuses_across_redeploy(client, url: str, redeploy: Callable[[], None], swapped: Callable[[], bool],
                             timeout_s: float, every_s: float, never: str, sent_after: int = 0) -> list[int]:
    """Critiques in flight before, during and after `redeploy()`, sent until `swapped()` holds (an
    assertion failure saying `never` after `timeout_s`): the status code of each."""
    with ThreadPoolExecutor(4) as pool:
        def send():
            return pool.submit(client.post, f"{url}/v1/critique", json=critique_body(max_tokens=8))

        futures = [send() for _ in range(16)]
        redeploy()
        futures += [send() for _ in range(sent_after)]
        deadline = time.time() + timeout_s
        while not swapped():
            assert time.time() < deadline, never
            futures.append(send())
            time.sleep(every_s)
        return [f.result().status_code for f in futures]


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
