"""The vLLM tier's S3 endpoint: Ray Serve LLM downloads LoRA adapters with boto3 inside its replicas,
which take their environment from Ray's workers, and those inherit it from this process when the
session's Ray starts. So the endpoint of the local S3 server (moto, on 127.0.0.1, started by
tests/vllm_tier/test_serve_llm_lora.py on this port) is set here, before any test runs; credentials
are moto's dummies."""

import os

from serve_payloads import free_port

os.environ.setdefault("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                   ("AWS_DEFAULT_REGION", "us-east-1")):
    os.environ.setdefault(key, value)
