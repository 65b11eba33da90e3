"""Critic service under load: dynamic batching vs one request at a time.

The tiny random-weight critic behind a local Ray Serve (127.0.0.1), one replica. The same fixed
number of `/v1/critique` requests is sent by concurrent clients, once with `max_batch_size=16`
(`--batch-wait-s`, default 0.1) and once with `max_batch_size=1`; a single client alone against the
unbatched app gives the unloaded latency. Reported: throughput
(requests/s), p50/p99 latency, and p99 relative to the single-request latency.

    .venv/bin/python bench/serve_load.py --quick --json bench/results/serve_load_quick.json
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx
from _results import write_results

from mmc_ray.config import Config, EngineConfig, ServeConfig, TinyModelConfig
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.tasks.generator import generate_problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bodies(n: int, max_tokens: int) -> list[dict]:
    problems = list(generate_problems(n, seed=99))
    return [{"question": p.question, "steps": [f"Step one of {p.problem_id}.", "Step two."], "answer": "3",
             "image": base64.b64encode(p.image).decode(), "max_tokens": max_tokens} for p in problems]


def load(url: str, requests: list[dict], clients: int) -> dict:
    latencies: list[float] = []
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=clients))

    def one(body: dict) -> None:
        start = time.perf_counter()
        reply = client.post(f"{url}/v1/critique", json=body)
        reply.raise_for_status()
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, requests))
    seconds = time.perf_counter() - start
    client.close()
    latencies.sort()
    return {"requests": len(requests), "clients": clients, "seconds": round(seconds, 2),
            "throughput_rps": round(len(requests) / seconds, 2),
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--batch-wait-s", type=float, default=0.1, help="serve.batch_wait_timeout_s")
    args = parser.parse_args(argv)
    # Critiques run 60-120 tokens (the trained tiny critic writes ~80): decoding, not the prompt, dominates.
    n, clients, max_tokens = (64, 16, 96) if args.quick else (192, 32, 96)

    import ray
    from ray import serve

    from mmc_ray.serve.deploy import deploy

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_vlm(TinyModelConfig(), Path(tmp) / "critic")
        base = Config(critic=EngineConfig(kind="hf", device="cpu", dtype="float32", min_pixels=3136,
                                          max_pixels=12544),
                      serve=ServeConfig(checkpoint=str(model), port=free_port(), num_cpus=1,
                                        max_ongoing_requests=64, max_tokens=128, default_max_tokens=64))
        requests = bodies(n, max_tokens)
        results: dict = {"config": {"requests": n, "clients": clients, "max_tokens": max_tokens,
                                    "replicas": 1}}
        for name, batch in (("batched", 16), ("unbatched", 1)):
            cfg = dataclasses.replace(base, serve=dataclasses.replace(base.serve, max_batch_size=batch,
                                                                      batch_wait_timeout_s=args.batch_wait_s))
            url = deploy(cfg, app_name=f"bench-{name}", route_prefix=f"/{name}")
            load(url, requests[:4], 4)  # warm-up
            if name == "unbatched":  # the unloaded latency, with no batching wait in it
                results["single"] = load(url, requests[: max(8, n // 8)], 1)
            results[name] = load(url, requests, clients)
            serve.delete(f"bench-{name}")
        serve.shutdown()
    ray.shutdown()
    single = results["single"]["p50_s"]
    batched, unbatched = results["batched"], results["unbatched"]
    results["speedup"] = round(batched["throughput_rps"] / unbatched["throughput_rps"], 2)
    results["batched_p99_vs_single_ratio"] = round(results["batched"]["p99_s"] / single, 2)
    print(f"{'mode':<10} {'clients':>7} {'req/s':>8} {'p50 s':>7} {'p99 s':>7}")
    for name in ("single", "unbatched", "batched"):
        r = results[name]
        print(f"{name:<10} {r['clients']:>7} {r['throughput_rps']:>8} {r['p50_s']:>7} {r['p99_s']:>7}")
    print(f"throughput speedup (batched / unbatched): {results['speedup']}x; "
          f"batched p99 / single-request latency: {results['batched_p99_vs_single_ratio']}x")
    write_results(results, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
