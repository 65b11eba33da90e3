"""Full fine-tuning vs LoRA for the critic, on the same data and steps (CPU), and the cost of serving
many adapters on one base.

Training: the critic SFT of the shipped seeing base (models/tiny-seeing) on a synthetic MMC dataset,
through the real trainer (Ray Train, 1 worker, DeepSpeed ZeRO-2), once with every weight trained and
once with `train.lora` (rank 8 on the language model's projections, adapter export only). Per fit:
trainable parameters, optimizer-state bytes (every tensor of DeepSpeed's optimizer state, fp32 master
copies included), the worker's peak memory (max RSS), tokens/s, export size and time (a second export
of the final checkpoint, timed alone), and on the held-out paths (validation + test split) verdict
accuracy and ProcessBench F1 of greedy critiques.

Serving: critiques/s of one HF engine answering the same requests through the base only and through
1, 4 and 8 adapters (requests spread round-robin over them; copies of the trained adapter under new
names: the cost does not depend on the weights). The HF engine runs one adapter per batch, so k
adapters split a batch into k.

    .venv/bin/python bench/lora.py --quick --json bench/results/lora_quick.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))

from _results import write_results
from critic_fidelity import build_dataset, dataset_config, judged

from mmc_ray.config import TrainConfig
from mmc_ray.config.sections import LoraConfig
from mmc_ray.critique.prompts import critic_messages
from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.engines.hf import HFEngine
from mmc_ray.models.shipped import SEEING_BASE
from mmc_ray.stages.critic_bench import critique_solution, judge
from mmc_ray.train.checkpoints import save_and_report
from mmc_ray.train.export import export_hf
from mmc_ray.train.trainer import TrainHooks, train

CRITIQUE_TOKENS = 160
OPTIMIZER_STATE = "optimizer_state.json"
RATIOS = ("trainable_params", "optimizer_state_bytes", "peak_memory_mb", "tokens_per_s", "export_bytes",
          "export_seconds")


class OptimizerStateBytes(TrainHooks):
    """Checkpoints as a fit always does; at the last one rank 0 also writes the bytes of every tensor
    in its optimizer's state."""

    def __init__(self, folder: Path, last_step: int) -> None:
        self.folder, self.last_step = str(folder), last_step

    def checkpoint(self, engine: Any, step: int, curve: list[float], metrics: dict[str, Any], rank: int,
                   world: int) -> None:
        save_and_report(engine, step, curve, metrics, rank, world)
        if rank == 0 and step == self.last_step:
            state_bytes = _tensor_bytes(engine.optimizer.state_dict())
            Path(self.folder, OPTIMIZER_STATE).write_text(json.dumps({"bytes": state_bytes}))


def _tensor_bytes(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def fit(tcfg: TrainConfig, data: Path, out: Path) -> dict[str, Any]:
    """One fit and its figures; `critic` is what an engine loads: (model folder, adapter folder | None)."""
    out.mkdir(parents=True)
    cfg = dataclasses.replace(dataset_config(), train=tcfg)
    summary = train(cfg, data, out / "fit", progress=False, hooks=OptimizerStateBytes(out, tcfg.max_steps))
    start = time.perf_counter()
    again = export_hf(summary.checkpoint, tcfg, out / "export-timed" / "hf")
    export_seconds = time.perf_counter() - start
    metrics, losses = summary.metrics, summary.losses
    return {
        "trainable_params": metrics["trainable_params"], "total_params": metrics["total_params"],
        "optimizer_state_bytes": json.loads((out / OPTIMIZER_STATE).read_text())["bytes"],
        "peak_memory_mb": round(metrics["peak_memory_mb"], 1),
        "tokens_per_s": round(metrics["tokens_per_s"], 1),
        "train_seconds": round(summary.seconds, 1), "loss_first": losses[0],
        "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
        "export_bytes": folder_bytes(again), "export_seconds": round(export_seconds, 2),
        "critic": (tcfg.init_model, str(again)) if tcfg.lora.enabled else (str(again), None),
    }


def engine_for(critic: tuple[str, str | None], tcfg: TrainConfig, copies: int = 1) -> HFEngine:
    """The critic's HF engine: a model folder, or the base with `copies` names for one adapter."""
    model, adapter = critic
    adapters = {f"a{i}": adapter for i in range(copies)} if adapter else None
    return HFEngine.from_path(model, device="cpu", dtype="float32", max_batch_size=16,
                              min_pixels=tcfg.min_pixels, max_pixels=tcfg.max_pixels, adapters=adapters,
                              default_adapter="a0" if adapter else "")


def serving(critic: tuple[str, str | None], tcfg: TrainConfig, solutions: list[Any],
            repeats: int) -> dict[str, Any]:
    """Critiques/s through the base alone and through 1, 4, 8 adapters, the same requests each time."""
    prompts = [GenerationRequest(messages=critic_messages(s.problem, s.steps, s.answer),
                                 images=(s.problem.image,), max_new_tokens=32, temperature=0.0)
               for s in solutions]
    figures = {}
    engine = engine_for(critic, tcfg, copies=8)
    spreads = (("base", [""]), ("1 adapter", ["a0"]), ("4 adapters", [f"a{i}" for i in range(4)]),
               ("8 adapters", [f"a{i}" for i in range(8)]))
    for label, adapters in spreads:
        batch = [dataclasses.replace(p, adapter=adapters[i % len(adapters)]) for i, p in enumerate(prompts)]
        engine.generate(batch[:2])  # warm
        best, tokens = float("inf"), 0
        for _ in range(repeats):
            start = time.perf_counter()
            results = engine.generate(batch)
            best = min(best, time.perf_counter() - start)
            tokens = sum(c.completion_tokens for r in results for c in r.completions)
        # Each adapter writes critiques of its own length: tokens/s is the fair rate.
        figures[label] = {"critiques_per_s": round(len(batch) / best, 2),
                          "tokens_per_s": round(tokens / best, 1), "completion_tokens": tokens,
                          "seconds": round(best, 2)}
    base = figures["base"]["tokens_per_s"]
    for label in figures:
        figures[label]["tokens_per_s_vs_base"] = round(figures[label]["tokens_per_s"] / base, 3)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer problems and steps (≤ 5 min on 2 cores)")
    parser.add_argument("--problems", type=int, help="synthetic problems searched (default 600; quick 150)")
    parser.add_argument("--steps", type=int, help="optimizer steps of each fit (default 300; quick 40)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n_problems = args.problems or (150 if args.quick else 600)
    steps = args.steps or (40 if args.quick else 300)
    requests = 16 if args.quick else 48

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        splits = build_dataset(dataset_config(), n_problems, tmp)
        held_out = splits["validation"] + splits["test"]
        print(f"dataset: {n_problems} problems → " + ", ".join(f"{s} {len(r)}" for s, r in splits.items())
              + " examples", flush=True)
        tcfg = TrainConfig(init_model=str(SEEING_BASE.resolve()), num_workers=1, cpus_per_worker=1.0,
                           learning_rate=3e-3, warmup_steps=max(steps // 40, 1), max_steps=steps,
                           checkpoint_every=steps, tokens_per_step=4096, wandb_project="")
        runs = {"full": tcfg,
                "lora": dataclasses.replace(tcfg, learning_rate=1e-2,
                                            lora=LoraConfig(enabled=True, r=args.rank, alpha=2 * args.rank,
                                                            merged=False))}
        fits: dict[str, dict[str, Any]] = {}
        solutions = [critique_solution(r) for r in held_out]
        for name, run_cfg in runs.items():
            fits[name] = fit(run_cfg, tmp / "dataset", tmp / name)
            judgements = judge(solutions, engine_for(fits[name]["critic"], run_cfg), CRITIQUE_TOKENS,
                               progress=False, score_steps=False)
            held = judged(judgements, held_out)
            fits[name]["held_out"] = {k: held[k]
                                      for k in ("processbench_f1", "verdict_accuracy", "parse_rate")}
            print(f"{name}: {fits[name]['train_seconds']:.0f} s, verdict {held['verdict_accuracy']:.3f}, "
                  f"ProcessBench F1 {held['processbench_f1']:.3f}", flush=True)
        served = serving(fits["lora"]["critic"], runs["lora"], solutions[:requests],
                         repeats=2 if args.quick else 3)
        for f in fits.values():
            f["critic"] = None

    full, lora = fits["full"], fits["lora"]
    print(f"\n{'':<28} {'full':>14} {'LoRA r' + str(args.rank):>14} {'LoRA/full':>10}")
    for key in (*RATIOS, "train_seconds"):
        print(f"{key:<28} {full[key]:>14,} {lora[key]:>14,} {lora[key] / full[key]:>10.3f}")
    for key in ("verdict_accuracy", "processbench_f1"):
        print(f"{key:<28} {full['held_out'][key]:>14.3f} {lora['held_out'][key]:>14.3f}")
    print(f"\n{'serving (HF engine)':<28} {'critiques/s':>12} {'tokens/s':>9} {'tokens/s vs base':>17}")
    for label, f in served.items():
        print(f"{label:<28} {f['critiques_per_s']:>12.2f} {f['tokens_per_s']:>9.1f} "
              f"{f['tokens_per_s_vs_base']:>17.3f}")
    results = {"quick": args.quick, "problems": n_problems, "steps": steps, "rank": args.rank,
               "full": full, "lora": lora,
               "lora_vs_full": {k: round(lora[k] / full[k], 4) for k in RATIOS},
               "serving": served}
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
