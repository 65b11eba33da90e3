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
import collections
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

from mmc_ray.config import TinyModelConfig, TrainConfig
from mmc_ray.eval.report import pct
from mmc_ray.models.loading import load_vlm
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.tasks.generator import generate_problems
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.solution import STEP_PREFIX
from mmc_ray.train.collate import collate_packed
from mmc_ray.train.examples import ExampleBuilder, TrainExample
from mmc_ray.train.local_fit import fit_in_process

FAMILIES = ("counting", "bar_chart", "arithmetic", "geometry")
OBSERVATION_OPS = frozenset({"count", "read_bar", "read_number", "measure"})
VARIANTS: dict[str, dict[str, Any]] = {
    "vision frozen": {"freeze": ("vision",), "text_only": False},
    "vision trained, lr/3": {"freeze": (), "text_only": False, "lr_scale": 1 / 3},
    "text only": {"freeze": ("vision",), "text_only": True},
}


def most_common_values(problems: list[Problem]) -> dict[tuple[str, str], str]:
    """Per (family, observation op), the value the training problems observe most often."""
    counts: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for problem in problems:
        for step in problem.steps:
            if step.op in OBSERVATION_OPS:
                counts[(problem.family, step.op)][step.value] += 1
    return {key: c.most_common(1)[0][0] for key, c in counts.items()}


def observed_value_tokens(problem: Problem, example: TrainExample,
                          tokenizer: Any) -> list[tuple[str, list[int]]]:
    """(op, positions in `example` of the tokens spelling the value) per observation step."""
    reference = problem.reference_solution
    encoded = tokenizer(reference + tokenizer.eos_token, add_special_tokens=False,
                        return_offsets_mapping=True)
    start = len(example) - len(encoded["input_ids"])
    if example.input_ids[start:] != encoded["input_ids"]:
        raise AssertionError(f"{problem.problem_id}: the example does not end with its reference solution")
    out, line_start = [], 0
    for index, (step, line) in enumerate(zip(problem.steps, reference.split("\n"), strict=False)):
        if step.op in OBSERVATION_OPS:
            at = line_start + len(STEP_PREFIX.format(index=index + 1)) + step.template.index("{value}")
            if reference[at:at + len(step.value)] != step.value:
                raise AssertionError(f"{problem.problem_id}: step {index + 1}'s value is not where its "
                                     "template puts it")
            positions = [start + j for j, (lo, hi) in enumerate(encoded["offset_mapping"])
                         if lo < at + len(step.value) and hi > at]
            out.append((step.op, positions))
        line_start += len(line) + 1
    return out


def read_accuracy(vlm: Any, held_out: list[tuple[Problem, TrainExample]],
                  common: dict[tuple[str, str], str]) -> dict[str, dict[str, float]]:
    """Per family: teacher-forced accuracy on observed values, and the most-common-value baseline."""
    import torch

    model = vlm.model.eval()
    hits: dict[str, list[bool]] = collections.defaultdict(list)
    base: dict[str, list[bool]] = collections.defaultdict(list)
    with torch.no_grad():
        for problem, example in held_out:
            batch = collate_packed([example], model, vlm.image_token_id)
            batch.pop("labels")
            predicted = model(**batch).logits[0].argmax(-1).tolist()
            values = iter(s for s in problem.steps if s.op in OBSERVATION_OPS)
            for op, positions in observed_value_tokens(problem, example, vlm.tokenizer):
                step = next(values)
                hits[problem.family].append(all(predicted[p - 1] == example.input_ids[p] for p in positions))
                base[problem.family].append(common.get((problem.family, op)) == step.value)
    return {family: {"accuracy": sum(v) / len(v), "most_common_value": sum(base[family]) / len(v),
                     "values": len(v)} for family, v in sorted(hits.items())}


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
            f"{f} {pct(m['accuracy'])}" for f, m in point["by_family"].items()), flush=True)

    started = time.perf_counter()
    fitted = fit_in_process(vlm, train_examples, cfg, random.Random(cfg.seed), on_step=probe)
    return {"learning_rate": cfg.learning_rate, "freeze": list(cfg.freeze), "text_only": variant["text_only"],
            "trainable_params": fitted.trainable_params, "params": fitted.total_params,
            "train_seconds": round(time.perf_counter() - started, 1),
            "by_family": curve[-1]["by_family"], "curve": curve}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer problems and steps (a smoke run)")
    parser.add_argument("--problems", type=int, help="training problems (default 6000; quick 1000)")
    parser.add_argument("--held-out", type=int, default=300, help="held-out problems probed")
    parser.add_argument("--steps", type=int, help="optimizer steps per variant (default 1000; quick 150)")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--image-px", type=int, default=112, help="longest image side the model sees")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    n_train = args.problems or (1000 if args.quick else 6000)
    steps = args.steps or (150 if args.quick else 1000)
    problems = list(generate_problems(n_train + args.held_out, seed=11, families=FAMILIES,
                                      difficulties=(1, 2, 3, 4), image_size=224))
    train, held_out = problems[:n_train], problems[n_train:]
    model_cfg = TinyModelConfig()
    results: dict[str, Any] = {"problems": n_train, "held_out": args.held_out, "steps": steps,
                               "image_px": args.image_px, "model": dataclasses.asdict(model_cfg),
                               "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_vlm(model_cfg, Path(tmp) / "tiny", max_pixels=args.image_px ** 2)
        for name in args.variants:
            print(f"{name}: {steps} steps on {n_train} reference solutions", flush=True)
            results["variants"][name] = fit_and_probe(model_dir, VARIANTS[name], train, held_out, steps,
                                                      args.learning_rate, -(-steps // 4))
    print(f"\nobserved values read right (teacher-forced) on {args.held_out} held-out problems:")
    print(f"{'family':<12}" + "".join(f"{n:>22}" for n in args.variants) + f"{'most common value':>20}")
    for family in FAMILIES:
        per_variant = [results["variants"][n]["by_family"].get(family) for n in args.variants]
        if per_variant[0] is None:
            continue
        print(f"{family:<12}" + "".join(f"{pct(m['accuracy']):>22}" for m in per_variant)
              + f"{pct(per_variant[0]['most_common_value']):>20}  ({per_variant[0]['values']} values)")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
