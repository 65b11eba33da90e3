"""Can the tiny VLM learn to read its images? The bottleneck behind the critic's fidelity (issue #20).

A critic can only find a misread value or a miscount if the model reads the image. This probe
pre-trains the tiny Qwen2-VL on synthetic problems' reference solutions (actor SFT, in one process,
the trainer's optimizer and packing), whose observation steps carry what the image shows ("there
are 5", "its value is 12", "it is 7 units"), then measures on held-out problems how often the model,
teacher-forced on the reference, predicts every token of each observed value, per family, beside
always answering the most common value of that family's observation (from the training problems).
Variants in one run: the vision tower frozen (the default for critics), the vision tower trained at a
lower learning rate, and the same fit with the images dropped (what the text alone gives away).
A model that reads its images beats both the most common value and the text-only fit.

    .venv/bin/python bench/perception_probe.py --json bench/results/perception_probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _results import write_results

from mmc_ray.config import Config, TinyModelConfig, TrainConfig
from mmc_ray.eval.report import pct
from mmc_ray.models.loading import load_vlm
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.train.examples import ExampleBuilder
from mmc_ray.train.local_fit import fit_in_process
from mmc_ray.train.perception import most_common_values, read_accuracy

FAMILIES = ("counting", "bar_chart", "arithmetic", "geometry")
VARIANTS: dict[str, dict[str, Any]] = {
    "vision frozen": {"freeze": ("vision",), "text_only": False},
    "vision trained, lr/3": {"freeze": (), "text_only": False, "lr_scale": 1 / 3},
    "text only": {"freeze": ("vision",), "text_only": True},
}


def fit_and_probe(model_dir: Path, variant: dict[str, Any], train: list[Problem], held_out: list[Problem],
                  steps: int, learning_rate: float, eval_every: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=steps, warmup_steps=max(steps // 40, 1),
                      learning_rate=learning_rate * variant.get("lr_scale", 1.0), freeze=variant["freeze"])
    vlm = load_vlm(model_dir, device="cpu", dtype="float32", min_pixels=cfg.min_pixels,
                   max_pixels=cfg.max_pixels)
    builder = ExampleBuilder(vlm, 2048, text_only=variant["text_only"])
    train_examples = [ex for ex in (builder.actor_sft(p.to_row()) for p in train) if ex is not None]
    test_examples = [(p, builder.actor_sft(p.to_row())) for p in held_out]
    common = most_common_values(train)
    curve: list[dict[str, Any]] = []

    def probe(losses: list[float]) -> None:
        step = len(losses)
        if step % eval_every and step != steps:
            return
        recent = losses[-50:]
        point = {"step": step, "loss": sum(recent) / len(recent),
                 "by_family": read_accuracy(vlm, test_examples, common)}
        curve.append(point)
        print(f"  step {step}: loss {point['loss']:.3f}; " + ", ".join(
            f"{f} {pct(m['read_accuracy'])}" for f, m in point["by_family"].items()), flush=True)

    started = time.perf_counter()
    fitted = fit_in_process(vlm, train_examples, cfg, random.Random(cfg.seed), after_step=probe)
    return {"learning_rate": cfg.learning_rate, "freeze": list(cfg.freeze), "text_only": variant["text_only"],
            "trainable_params": fitted.trainable_params, "params": fitted.total_params,
            "train_seconds": round(time.perf_counter() - started, 1),
            "by_family": curve[-1]["by_family"], "curve": curve}


def probe_base(path: Path, train: list[Problem], held_out: list[Problem]) -> dict[str, Any]:
    """The model at `path` probed as it is, under its own pixel budget."""
    vlm = load_vlm(path, device="cpu", dtype="float32")
    builder = ExampleBuilder(vlm, 2048)
    probe = [(p, builder.actor_sft(p.to_row())) for p in held_out]
    return {"model": str(path), "by_family": read_accuracy(vlm, probe, most_common_values(train))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer problems and steps (a smoke run)")
    parser.add_argument("--problems", type=int, help="training problems (default 6000; quick 1000)")
    parser.add_argument("--held-out", type=int, default=300, help="held-out problems probed")
    parser.add_argument("--steps", type=int, help="optimizer steps per variant (default 1000; quick 150)")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--image-px", type=int, default=112, help="longest image side the model sees")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                        help="fits compared (default: all; with --base: text only)")
    parser.add_argument("--base", type=Path, help="a model folder probed as it is, no fit (the shipped "
                        "seeing base: models/tiny-seeing), beside the fits")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    n_train = args.problems or (1000 if args.quick else 6000)
    steps = args.steps or (150 if args.quick else 1000)
    variants = args.variants if args.variants is not None else ["text only"] if args.base else list(VARIANTS)
    train = list(generate_problems(n_train, seed=11, families=FAMILIES, difficulties=(1, 2, 3, 4)))
    # Seed 12's problems: fresh to every fit here and to the seeing base's recipe (its data is seed 11's).
    held_out = list(generate_problems(args.held_out, seed=12, families=FAMILIES, difficulties=(1, 2, 3, 4)))
    # Beside a base, the fits start from random weights of the recipe's architecture (same capacity).
    model_cfg = Config().pretrain.model if args.base else TinyModelConfig()
    results: dict[str, Any] = {"problems": n_train, "held_out": args.held_out, "steps": steps,
                               "image_px": args.image_px, "model": dataclasses.asdict(model_cfg),
                               "variants": {}}
    if args.base:
        print(f"{args.base}: probed as it is", flush=True)
        results["variants"]["base"] = probe_base(args.base, train, held_out)
        variants = ["base", *variants]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_vlm(model_cfg, Path(tmp) / "tiny", max_pixels=args.image_px ** 2)
        for name in variants:
            if name == "base":
                continue
            print(f"{name}: {steps} steps on {n_train} reference solutions", flush=True)
            results["variants"][name] = fit_and_probe(model_dir, VARIANTS[name], train, held_out, steps,
                                                      args.learning_rate, -(-steps // 4))
    print(f"\nobserved values read right (teacher-forced) on {args.held_out} held-out problems:")
    print(f"{'family':<12}" + "".join(f"{n:>22}" for n in variants) + f"{'most common value':>20}")
    for family in FAMILIES:
        per_variant = [results["variants"][n]["by_family"].get(family) for n in variants]
        if per_variant[0] is None:
            continue
        print(f"{family:<12}" + "".join(f"{pct(m['read_accuracy']):>22}" for m in per_variant)
              + f"{pct(per_variant[0]['most_common_value']):>20}  ({per_variant[0]['values']} values)")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
