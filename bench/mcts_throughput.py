"""MCTS throughput: the batched search driver vs the same search one tree at a time.

Same problems, same budgets, same engine in this process (LocalDispatcher), so the ratio isolates
what batching requests across trees buys. Runs with the tiny random-weight Qwen2-VL through
HFEngine and with the simulated actor, and sweeps the number of concurrent trees.

    .venv/bin/python bench/mcts_throughput.py --quick --json bench/results/mcts_throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _results import write_results

from mmc_ray.config import EngineConfig, SearchConfig, SimulatorConfig, TinyModelConfig
from mmc_ray.engines.factory import build_engine
from mmc_ray.stages.search import run_search
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.dispatch import LocalDispatcher


def measure(engine, problems, search: SearchConfig, concurrent_trees: int) -> dict:
    cfg = dataclasses.replace(search, max_active_trees=concurrent_trees)
    summary = run_search(problems, LocalDispatcher(engine), cfg, lambda p, t: None, progress=False)
    return {
        "concurrent_trees": concurrent_trees,
        "trees": summary.trees,
        "expansions": summary.expansions,
        "rollouts": summary.rollouts,
        "engine_calls": summary.engine_calls,
        "seconds": round(summary.seconds, 3),
        "expansions_per_s": round(summary.expansions_per_s, 2),
    }


def bench_engine(name: str, engine, problems, search: SearchConfig, sweep: list[int]) -> dict:
    runs = [measure(engine, problems, search, k) for k in sweep]
    naive = runs[0]
    for run in runs:
        run["speedup_vs_one_tree"] = round(run["expansions_per_s"] / naive["expansions_per_s"], 2)
        print(f"{name:<10} {run['concurrent_trees']:>6} {run['expansions']:>10} {run['engine_calls']:>7} "
              f"{run['seconds']:>9.2f} {run['expansions_per_s']:>10.1f} {run['speedup_vs_one_tree']:>8.2f}x",
              flush=True)
    return {"naive": naive, "batched": runs[-1], "sweep": runs,
            "speedup": runs[-1]["speedup_vs_one_tree"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller run (a few minutes on 2 cores)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    n_problems = 32 if args.quick else 64
    sweep = [1, 4, 16, 32] if args.quick else [1, 4, 16, 64]
    problems = list(generate_problems(n_problems, seed=7))
    search = SearchConfig(num_simulations=4 if args.quick else 6, expansion_width=3, rollouts_per_node=2,
                          step_max_tokens=16, rollout_max_tokens=32, requests_per_call=128)
    print(f"{n_problems} problems, {search.num_simulations} simulations/tree, width "
          f"{search.expansion_width}, {search.rollouts_per_node} rollouts/node")
    print(f"{'engine':<10} {'trees':>6} {'expansions':>10} {'calls':>7} {'seconds':>9} {'exp/s':>10} "
          f"{'speedup':>9}")

    with tempfile.TemporaryDirectory() as tmp:
        from mmc_ray.models.tiny import build_tiny_vlm

        model = build_tiny_vlm(TinyModelConfig(), Path(tmp) / "tiny-vlm")
        hf = build_engine(EngineConfig(kind="hf", model_path=str(model), device="cpu", dtype="float32",
                                       max_batch_size=256, max_pixels=56 * 56))
        results = {"tiny_hf_vlm": bench_engine("tiny-hf", hf, problems, search, sweep)}
    simulated = build_engine(EngineConfig(kind="simulated", simulator=SimulatorConfig()))
    results["simulated"] = bench_engine("simulated", simulated, problems, search, sweep)
    results["speedup"] = results["tiny_hf_vlm"]["speedup"]
    results["config"] = {"problems": n_problems, "sweep": sweep, "search": dataclasses.asdict(search),
                         "cpus": os.cpu_count()}
    print(f"headline: batched search is {results['speedup']:.1f}x one tree at a time (tiny HF VLM)")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
