"""Fidelity of a tiny critic trained from scratch by our trainer on the synthetic MMC dataset.

Synthetic problems → MCTS with the simulated actor → rule-annotated MMC dataset → a random-weight tiny
Qwen2-VL fine-tuned on the train split (Ray Train, 2 CPU workers, DeepSpeed ZeRO-2) → greedy critiques
of every held-out (test split) solution, scored against the ground truth: verdict accuracy, and
first-wrong-step accuracy (of the truly wrong solutions, the share whose first wrong step the critic
names; = step recall), with step precision/F1 and the parse rate. For scale, the baselines a critic
must beat: always answering the majority verdict, and always naming the most common wrong step.

    .venv/bin/python bench/critic_fidelity.py --quick --json bench/results/critic_fidelity_quick.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))

from _results import write_results

from mmc_ray.config import Config, TinyModelConfig, TrainConfig
from mmc_ray.critique.prompts import critic_messages
from mmc_ray.critique.schema import parse_critique
from mmc_ray.engines.hf import HFEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.eval.metrics import critic_metrics
from mmc_ray.eval.processbench import Judged, prediction_from_verdict, processbench_f1
from mmc_ray.generation import GenerationRequest
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.stages.annotate import annotate_to_dir
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.generator import generate_problems
from mmc_ray.tasks.problem import Problem
from mmc_ray.workers.dispatch import LocalDispatcher


def dataset_config() -> Config:
    """The default config with the problems (all difficulties, 224 px images) and the search (12
    simulations, 2 rollouts per node) that make the benchmark's MMC dataset."""
    base = Config()
    return dataclasses.replace(
        base,
        tasks=dataclasses.replace(base.tasks, difficulties=(1, 2, 3, 4), image_size=224),
        search=dataclasses.replace(base.search, num_simulations=12, rollouts_per_node=2, max_depth=12),
    )


def build_dataset(cfg: Config, n_problems: int, out: Path) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    problems = list(generate_problems(n_problems, seed=7, families=cfg.tasks.families,
                                      difficulties=cfg.tasks.difficulties, image_size=cfg.tasks.image_size))
    search_to_dir(problems, LocalDispatcher(SimulatedActorEngine(cfg.actor.simulator)),
                  dataclasses.replace(cfg.search, max_active_trees=256), out / "trees", progress=False)
    annotate_to_dir(out / "trees", out / "dataset", cfg, local=True, progress=False)
    return {split: [row for path in shard_paths(out / "dataset" / "data", split)
                    for row in pq.read_table(path).to_pylist()]
            for split in ("train", "validation", "test")}


def critique_rows(engine: HFEngine, rows: list[dict], max_new_tokens: int) -> list[dict]:
    """Greedy critiques of `rows` as eval-metric rows (the fields `critic_metrics` reads)."""
    problems = [Problem.from_row(r) for r in rows]
    requests = [GenerationRequest(messages=critic_messages(p, r["path_steps"], r["path_answer"]),
                                  images=p.images, max_new_tokens=max_new_tokens, temperature=0.0)
                for p, r in zip(problems, rows, strict=True)]
    scored = []
    for row, result in zip(rows, engine.generate(requests), strict=True):
        text = result.completions[0].text
        parsed = parse_critique(text, len(row["path_steps"]))
        critique = parsed.critique
        scored.append({
            "correct": row["verdict"] == "correct",
            "true_first_wrong_step": row["first_wrong_step"] if row["verdict"] == "incorrect" else None,
            "critic_text": text, "critic_parse_error": parsed.error,
            "critic_verdict": critique.verdict if critique else None,
            "critic_first_wrong_step": critique.first_wrong_step if critique else None,
        })
    return scored


def baselines(train: list[dict], test: list[dict]) -> dict[str, float]:
    """What answering from label frequencies alone (learned on train) scores on test."""
    majority = Counter(r["verdict"] for r in train).most_common(1)[0][0]
    wrong_steps = Counter(r["first_wrong_step"] for r in train if r["verdict"] == "incorrect")
    common_step = wrong_steps.most_common(1)[0][0]
    wrong = [r for r in test if r["verdict"] == "incorrect"]
    constant = prediction_from_verdict(majority, common_step)  # one answer for every solution
    judged = [Judged(prediction_from_verdict(r["verdict"], r["first_wrong_step"]), constant) for r in test]
    return {"majority_verdict": majority,
            "constant_processbench_f1": processbench_f1(judged)["f1"],
            "majority_verdict_accuracy": sum(r["verdict"] == majority for r in test) / len(test),
            "most_common_step": common_step,
            "most_common_step_accuracy":
                sum(r["first_wrong_step"] == common_step for r in wrong) / max(len(wrong), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer problems and steps (a smoke run)")
    parser.add_argument("--problems", type=int, help="synthetic problems to search (default 2000; quick 160)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 800; quick 60)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n_problems = args.problems or (160 if args.quick else 2000)
    steps = args.steps or (60 if args.quick else 800)

    from mmc_ray.train.trainer import train

    cfg = dataset_config()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        splits = build_dataset(cfg, n_problems, tmp)
        data_seconds = time.perf_counter() - start
        print(f"dataset: {n_problems} problems → " + ", ".join(f"{s} {len(r)}" for s, r in splits.items())
              + f" examples ({data_seconds:.0f} s)", flush=True)
        model = build_tiny_vlm(TinyModelConfig(), tmp / "tiny-vlm")
        tcfg = TrainConfig(init_model=str(model), num_workers=2, cpus_per_worker=0.5, learning_rate=3e-3,
                           warmup_steps=max(steps // 20, 1), max_steps=steps, checkpoint_every=steps,
                           tokens_per_step=4096, wandb_project="")
        summary = train(dataclasses.replace(cfg, train=tcfg), tmp / "dataset", tmp / "critic")
        losses = summary.losses
        print(f"trained {steps} steps in {summary.seconds:.0f} s: loss {losses[0]:.3f} → "
              f"{sum(losses[-20:]) / len(losses[-20:]):.3f} (mean of the last 20)", flush=True)
        engine = HFEngine.from_path(summary.exported, device="cpu", dtype="float32", max_batch_size=16,
                                    min_pixels=tcfg.min_pixels, max_pixels=tcfg.max_pixels)
        start = time.perf_counter()
        held_out = splits["test"]
        metrics = critic_metrics(critique_rows(engine, held_out, max_new_tokens=160))
        eval_seconds = time.perf_counter() - start

    results = {
        "problems": n_problems, "examples": {s: len(r) for s, r in splits.items()},
        "steps": steps, "train_seconds": round(summary.seconds, 1), "data_seconds": round(data_seconds, 1),
        "eval_seconds": round(eval_seconds, 1), "tokens_per_s": summary.metrics.get("tokens_per_s"),
        "loss_first": losses[0], "loss_last20": sum(losses[-20:]) / len(losses[-20:]),
        "held_out": metrics, "baselines": baselines(splits["train"], held_out),
        "first_wrong_step_accuracy": metrics["step_recall"], "verdict_accuracy": metrics["verdict_accuracy"],
        "processbench_f1": metrics["processbench_f1"],
    }
    b = results["baselines"]
    print(f"\nheld-out split: {len(held_out)} solutions")
    print(f"{'figure':<28} {'critic':>8} {'baseline':>9}")
    for name, value, baseline in (
        ("ProcessBench F1", metrics["processbench_f1"], b["constant_processbench_f1"]),
        ("verdict accuracy", metrics["verdict_accuracy"], b["majority_verdict_accuracy"]),
        ("first-wrong-step accuracy", metrics["step_recall"], b["most_common_step_accuracy"]),
        ("step precision", metrics["step_precision"], None),
        ("step F1", metrics["step_f1"], None),
        ("parse rate", metrics["parse_rate"], None),
    ):
        shown = "-" if baseline is None else f"{baseline:.1%}"
        print(f"{name:<28} {'-' if value is None else f'{value:.1%}':>8} {shown:>9}")
    print(f"training time {summary.seconds:.0f} s for {steps} steps on 2 CPU workers")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
