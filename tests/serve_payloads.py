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
