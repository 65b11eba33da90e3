"""Critic service under load: dynamic batching vs one request at a time.

The tiny random-weight critic behind a local Ray Serve (127.0.0.1), one replica. For each
concurrency level (`--clients`), that many closed-loop clients send a fixed number of `/v1/critique`
requests, once to an app with `@serve.batch` of `max_batch_size` = the concurrency (a full batch
never waits out `--batch-wait-s`) and once to an app with `max_batch_size=1`; a single client alone
against the unbatched app gives the unloaded latency. Reported per level: throughput (requests/s),
p50/p99 latency, the throughput speedup and p99 relative to the single-request latency (target:
>=5x at <=2x), and the best speedup among the levels that keep p99 within 2x.

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
from mmc_ray.tasks.synthetic import generate_problems

TARGET_SPEEDUP, TARGET_P99_RATIO = 5.0, 2.0


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
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")],
                        help="concurrency levels, comma-separated (default 4,8,12,16; full run 4,8,16,32)")
    parser.add_argument("--batch-wait-s", type=float, default=0.05, help="serve.batch_wait_timeout_s")
    args = parser.parse_args(argv)
    # Critiques run 60-120 tokens (the trained tiny critic writes ~80): decoding, not the prompt, dominates.
    n, levels, max_tokens = (96, [4, 8, 12, 16], 96) if args.quick else (192, [4, 8, 16, 32], 96)
    levels = args.clients or levels

    import ray
    from ray import serve

    from mmc_ray.ray_runtime import local_ray_options
    from mmc_ray.serve.deploy import deploy

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **local_ray_options())
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_vlm(TinyModelConfig(), Path(tmp) / "critic")
        base = Config(critic=EngineConfig(kind="hf", device="cpu", dtype="float32", min_pixels=3136,
                                          max_pixels=12544),
                      serve=ServeConfig(checkpoint=str(model), port=free_port(), num_cpus=1,
                                        max_ongoing_requests=64, max_tokens=128, default_max_tokens=64,
                                        batch_wait_timeout_s=args.batch_wait_s))
        requests = bodies(n, max_tokens)

        def deployed(max_batch_size: int) -> str:
            serve_cfg = dataclasses.replace(base.serve, max_batch_size=max_batch_size)
            cfg = dataclasses.replace(base, serve=serve_cfg)
            url = deploy(cfg, app_name=f"bench-{max_batch_size}", route_prefix=f"/b{max_batch_size}")
            load(url, requests[:8], 4)  # warm-up
            return url

        url = deployed(1)
        single = load(url, requests[:16], 1)  # the unloaded latency, with no batching wait in it
        unbatched = {c: load(url, requests[: n // 2], c) for c in levels}  # one at a time: ~flat in c
        serve.delete("bench-1")
        batched = {}
        for c in levels:  # max_batch_size = the concurrency, so a full batch never waits for the timeout
            url = deployed(c)
            batched[c] = load(url, requests, c)
            serve.delete(f"bench-{c}")
        serve.shutdown()
    ray.shutdown()

    rows = []
    for c in levels:
        speedup = round(batched[c]["throughput_rps"] / unbatched[c]["throughput_rps"], 2)
        p99_ratio = round(batched[c]["p99_s"] / single["p50_s"], 2)
        rows.append({"clients": c, "max_batch_size": c, "batched": batched[c], "unbatched": unbatched[c],
                     "speedup": speedup, "p99_vs_single": p99_ratio,
                     "meets_target": speedup >= TARGET_SPEEDUP and p99_ratio <= TARGET_P99_RATIO})
    within = [r for r in rows if r["p99_vs_single"] <= TARGET_P99_RATIO]
    best = max(within, key=lambda r: r["speedup"]) if within else None
    results = {"config": {"requests": n, "max_tokens": max_tokens, "replicas": 1,
                          "batch_wait_timeout_s": args.batch_wait_s},
               "single": single, "levels": rows,
               "best_within_p99_target": best and {k: best[k] for k in ("clients", "speedup",
                                                                         "p99_vs_single")}}
    print(f"single client: {single['throughput_rps']} req/s, p50 {single['p50_s']} s, "
          f"p99 {single['p99_s']} s")
    print(f"{'clients':>7} {'unbatched req/s':>15} {'batched req/s':>13} {'speedup':>7} {'p50 s':>6} "
          f"{'p99 s':>6} {'p99/single':>10} {'target':>6}")
    for r in rows:
        b = r["batched"]
        print(f"{r['clients']:>7} {r['unbatched']['throughput_rps']:>15} {b['throughput_rps']:>13} "
              f"{r['speedup']:>6}x {b['p50_s']:>6} {b['p99_s']:>6} {r['p99_vs_single']:>9}x "
              f"{'met' if r['meets_target'] else 'missed':>6}")
    print(f"best speedup with p99 <= {TARGET_P99_RATIO}x single: "
          + (f"{best['speedup']}x at {best['clients']} clients" if best else "none"))
    write_results(results, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
