"""What the critic-service tests send: one synthetic problem with its image, a /v1/critique body, and
a free local port (tests/ray/test_serve.py on CPU, tests/gpu/test_serve_llm.py with vLLM,
tests/unit/test_serve_llm_mapping.py)."""

import base64
import socket

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
