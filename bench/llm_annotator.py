"""The LLM annotator with a real model that writes critiques: a tiny Qwen2-VL our trainer fine-tunes as
an annotator, compared with the rule (ground truth) and mc (search values) annotators.

Synthetic problems → MCTS with the simulated actor → rule-annotated MMC dataset → a random-weight tiny
Qwen2-VL trained with `train.task=annotator` (the annotator prompt: the wrong path beside its correct
sibling, with the rule critique as the reply). Then fresh problems are searched and their mined pairs
annotated three ways (`annotate.method` rule, mc, llm with the trained model): the llm annotator's
parse rate (critiques / pairs; the rest are counted drops with their reason) and how often any two
annotators agree on the verdict (every pair both annotated) and on the first wrong step (divergent
pairs both annotated). For scale: always naming the step just after the divergence.

    .venv/bin/python bench/llm_annotator.py --quick --json bench/results/llm_annotator_quick.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from _results import write_results
from critic_fidelity import build_dataset, dataset_config

from mmc_ray.config import EngineConfig, TinyModelConfig, TrainConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.stages.annotate import annotate_to_dir
from mmc_ray.stages.dataset_card import card_stats
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.layout import DROPS, drops_dir, split_shards
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.dispatch import LocalDispatcher

METHODS = ("rule", "mc", "llm")


def agreement(a: dict[str, dict], b: dict[str, dict]) -> dict[str, Any]:
    """How two annotators' critiques of the same pairs agree (pairs both annotated)."""
    common = sorted(a.keys() & b.keys())
    divergent = [p for p in common if a[p]["kind"] == "divergent"]
    return {
        "pairs": len(common),
        "verdict": sum(a[p]["verdict"] == b[p]["verdict"] for p in common) / max(len(common), 1),
        "divergent_pairs": len(divergent),
        "first_wrong_step": sum(a[p]["first_wrong_step"] == b[p]["first_wrong_step"]
                                for p in divergent) / max(len(divergent), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer problems and steps (a smoke run)")
    parser.add_argument("--problems", type=int, help="training problems (default 600; quick 120)")
    parser.add_argument("--held-out", type=int,
                        help="problems whose pairs are annotated (default 60; quick 20)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 400; quick 120)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n_train = args.problems or (120 if args.quick else 600)
    n_held_out = args.held_out or (20 if args.quick else 60)
    steps = args.steps or (120 if args.quick else 400)

    from mmc_ray.train.trainer import train

    cfg = dataset_config()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        splits = build_dataset(cfg, n_train, tmp)
        print(f"training data: {n_train} problems → {len(splits['train'])} rule critiques", flush=True)
        model = build_tiny_vlm(TinyModelConfig(), tmp / "tiny-vlm")
        tcfg = TrainConfig(task="annotator", init_model=str(model), num_workers=2, cpus_per_worker=0.5,
                           learning_rate=3e-3, warmup_steps=max(steps // 20, 1), max_steps=steps,
                           checkpoint_every=steps, tokens_per_step=4096, wandb_project="")
        summary = train(dataclasses.replace(cfg, train=tcfg), tmp / "dataset", tmp / "annotator")
        print(f"trained {steps} steps in {summary.seconds:.0f} s: loss {summary.losses[0]:.3f} → "
              f"{summary.losses[-1]:.3f}", flush=True)

        t = cfg.tasks
        problems = list(generate_problems(n_held_out, seed=900_000, families=t.families,
                                          difficulties=t.difficulties, image_size=t.image_size))
        search_to_dir(problems, LocalDispatcher(SimulatedActorEngine(cfg.actor.simulator)), cfg.search,
                      tmp / "held-out-trees", progress=False)
        annotator = EngineConfig(kind="hf", model_path=str(summary.exported), device="cpu", dtype="float32",
                                 min_pixels=tcfg.min_pixels, max_pixels=tcfg.max_pixels)
        critiques, seconds, stats = {}, {}, {}
        for method in METHODS:
            mcfg = dataclasses.replace(cfg, annotator=annotator, annotate=dataclasses.replace(
                cfg.annotate, method=method, split_fractions=(1.0, 0.0, 0.0), temperature=0.0))
            start = time.perf_counter()
            annotate_to_dir(tmp / "held-out-trees", tmp / method, mcfg, local=True, progress=False)
            seconds[method] = round(time.perf_counter() - start, 1)
            stats[method] = card_stats(tmp / method)
            critiques[method] = {r["pair_id"]: r for path in split_shards(tmp / method, "train")
                                 for r in pq.read_table(path).to_pylist()}
        dropped = [r for path in shard_paths(drops_dir(tmp / "llm"), DROPS)
                   for r in pq.read_table(path).to_pylist()]

    pairs = stats["llm"]["rows"] + stats["llm"]["drops"]
    rule = critiques["rule"]
    divergent = [r for r in rule.values() if r["kind"] == "divergent"]
    results = {
        "train_problems": n_train, "train_examples": len(splits["train"]), "steps": steps,
        "train_seconds": round(summary.seconds, 1), "loss_first": summary.losses[0],
        "loss_last": summary.losses[-1], "held_out_problems": n_held_out, "pairs": pairs,
        "annotate_seconds": seconds,
        "llm_parse_rate": stats["llm"]["rows"] / max(pairs, 1),
        "llm_drops": stats["llm"]["drops"],
        "llm_dropped_outputs": [r["raw_output"][:400] for r in dropped[:3]],
        "llm_critiques": [r["critique_text"] for r in list(critiques["llm"].values())[:3]],
        "llm_drop_reasons": stats["llm"]["drop_reason"],
        "agreement": {f"{a}_vs_{b}": agreement(critiques[a], critiques[b])
                      for a, b in combinations(METHODS, 2)},
        "step_after_divergence_vs_rule": sum(r["first_wrong_step"] == r["divergence_depth"] + 1
                                             for r in divergent) / max(len(divergent), 1),
    }
    print(f"\n{pairs} pairs from {n_held_out} held-out problems; llm parse rate "
          f"{results['llm_parse_rate']:.1%} ({results['llm_drops']} counted drops)")
    print(f"{'annotators':<16} {'pairs':>6} {'verdict':>8} {'divergent':>10} {'first wrong step':>17}")
    for name, agree in results["agreement"].items():
        print(f"{name:<16} {agree['pairs']:>6} {agree['verdict']:>8.1%} {agree['divergent_pairs']:>10} "
              f"{agree['first_wrong_step']:>17.1%}")
    print(f"always the step after the divergence, vs rule: {results['step_after_divergence_vs_rule']:.1%}")
    print("annotation time: " + ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items()))
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
