"""Fidelity of a tiny critic trained by our trainer on the synthetic MMC dataset.

Synthetic problems → MCTS with the simulated actor → rule-annotated MMC dataset → the shipped seeing
base (models/tiny-seeing; `--random-model`: a random-weight tiny Qwen2-VL) fine-tuned on the train
split (Ray Train + DeepSpeed ZeRO-2 on CPU) → greedy critiques of
every held-out (validation and test split) path, scored against the ground truth:

* `processbench_f1` (earliest wrong step or −1; F1 of acc_err and acc_cor), `verdict_accuracy`,
  first-wrong-step accuracy (= step recall), step precision/F1, parse rate;
* `refine_gain`: refinement of fresh problems (simulated actor, this critic) final minus single-pass
  accuracy, a fraction (0.10 = +10 points);
* best-of-N on the same fresh problems: N = 1, 2, 4, 8 sampled answers, the one the critic scores
  highest (P(correct) from the likelihoods of its openings, and min step soundness) beside majority
  vote and the any-correct bound;
* beside each, its baselines: label frequencies (always the majority verdict, always the most
  common step), a **text-only critic** (the same fit with the images dropped, judged without them:
  what a critic gets from the text alone), and for refinement the oracle critic (ground truth) and
  the blind critic (every answer sent back: what revising gains without judgement);
* a learning curve: the figures at every `--curve-points`th of the fit against its token budget.

    .venv/bin/python bench/critic_fidelity.py --quick --json bench/results/critic_fidelity_quick.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))

from _results import write_results

from mmc_ray.config import Config, TinyModelConfig, TrainConfig
from mmc_ray.engines.blind_critic import BlindCriticEngine
from mmc_ray.engines.hf import HFEngine
from mmc_ray.engines.rule_critic import RuleCriticEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.eval.best_of_n import best_of_n_metrics
from mmc_ray.eval.metrics import evaluate, frequency_baselines
from mmc_ray.eval.processbench import critic_bench_report
from mmc_ray.eval.report import pct
from mmc_ray.models.shipped import SEEING_BASE
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.refine.loop import RefinementLoop
from mmc_ray.refine.verify import sample_and_verify
from mmc_ray.stages.annotate import annotate_to_dir
from mmc_ray.stages.critic_bench import critique_solution, judge
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.train.checkpoints import save_and_report
from mmc_ray.train.export import save_hf
from mmc_ray.train.trainer import TrainHooks
from mmc_ray.workers.dispatch import LocalDispatcher

CRITIQUE_TOKENS = 160


def dataset_config(no_error_per_problem: int | None = None) -> Config:
    """The default config with the problems (all difficulties, 224 px images) and the search (12
    simulations, 2 rollouts per node) that make the benchmark's MMC dataset; `no_error_per_problem`
    overrides how many fully correct paths each tree adds (annotate.mining)."""
    base = Config()
    mining = base.annotate.mining
    if no_error_per_problem is not None:
        mining = dataclasses.replace(mining, no_error_per_problem=no_error_per_problem)
    return dataclasses.replace(
        base,
        tasks=dataclasses.replace(base.tasks, difficulties=(1, 2, 3, 4), image_size=224),
        search=dataclasses.replace(base.search, num_simulations=12, rollouts_per_node=2, max_depth=12),
        annotate=dataclasses.replace(base.annotate, mining=mining),
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


class WeightsAtCheckpoints(TrainHooks):
    """Checkpoints as a fit always does, and rank 0 also keeps the full weights of each (one
    ZeRO-2 worker holds them all), for the learning curve."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def checkpoint(self, engine: Any, step: int, curve: list[float], metrics: dict[str, Any], rank: int,
                   world: int) -> None:
        import torch

        save_and_report(engine, step, curve, metrics, rank, world)
        if rank == 0:
            torch.save(engine.module.state_dict(), Path(self.folder, f"step_{step:07d}.pt"))


def fit(cfg: Config, tcfg: TrainConfig, data: Path, out: Path) -> tuple[Any, list[tuple[int, Path]]]:
    """One fit; its summary and an exported critic at each checkpoint (step, folder)."""
    import torch

    from mmc_ray.train.trainer import train

    weights = out / "weights"
    weights.mkdir(parents=True)
    summary = train(dataclasses.replace(cfg, train=tcfg), data, out / "fit",
                    hooks=WeightsAtCheckpoints(weights))
    exported = []
    for path in sorted(weights.glob("step_*.pt")):
        step = int(path.stem.split("_")[1])
        exported.append((step, save_hf(torch.load(path), tcfg, out / f"critic-{step}")))
    return summary, exported


def critic_engine(path: Path, tcfg: TrainConfig) -> HFEngine:
    return HFEngine.from_path(path, device="cpu", dtype="float32", max_batch_size=16,
                              min_pixels=tcfg.min_pixels, max_pixels=tcfg.max_pixels)


def refine_gain(cfg: Config, critic: Any, problems: list) -> dict[str, Any]:
    """Refinement of `problems` by the simulated actor with `critic`: accuracies and the gain."""
    records = RefinementLoop(SimulatedActorEngine(cfg.actor.simulator), critic, cfg.refine).run(problems)
    metrics = evaluate([r.to_row() for r in records])
    return {"single_pass_accuracy": metrics.single_pass_accuracy, "final_accuracy": metrics.final_accuracy,
            "refine_gain": metrics.refine_gain, "wrong_to_right": metrics.wrong_to_right,
            "right_to_wrong": metrics.right_to_wrong,
            "critic_in_the_loop": dataclasses.asdict(metrics.critic)}


def best_of_n(cfg: Config, critic: Any, problems: list) -> dict[str, Any]:
    rows = sample_and_verify(problems, SimulatedActorEngine(cfg.actor.simulator), critic, cfg.refine)
    return dataclasses.asdict(best_of_n_metrics(rows, cfg.refine.best_of_n))


def verifier_auc(judgements: list[dict], problem_of: dict[str, str] | None = None) -> float | None:
    """P(a right path's P(correct) > a wrong path's), ties half: how well the critic's likelihood
    of "correct" (its last step's soundness) ranks paths, whatever threshold a pick would use. With
    `problem_of` (solution id → problem id) only paths of one problem are compared: what best-of-N
    needs, without the credit a critic gets for telling hard problems from easy ones."""
    scored = [j for j in judgements if j["step_sound"]]
    problem_of = problem_of or {}
    pairs = [(r["step_sound"][-1], w["step_sound"][-1]) for r in scored if r["label"] == -1
             for w in scored if w["label"] != -1
             and problem_of.get(r["solution_id"]) == problem_of.get(w["solution_id"])]
    return sum((r > w) + 0.5 * (r == w) for r, w in pairs) / len(pairs) if pairs else None


def judged(judgements: list[dict], rows: list[dict]) -> dict[str, Any]:
    """The held-out figures of one checkpoint, by true error type too."""
    report = critic_bench_report(judgements)
    pb, scores = report.processbench.overall, report.step_macro_f1_from_scores
    return {"processbench_f1": pb.f1, "verdict_accuracy": report.verdict_accuracy,
            "first_wrong_step_accuracy": pb.acc_err, "judged_correct_accuracy": pb.acc_cor,
            "parse_rate": report.parse_rate,
            "step_macro_f1": report.step_macro_f1_from_critiques.overall.macro_f1,
            "step_macro_f1_from_scores": scores.overall.macro_f1 if scores else None,
            "verifier_auc": verifier_auc(judgements),
            "verifier_auc_within_problem": verifier_auc(
                judgements, {r["pair_id"]: r["problem_id"] for r in rows}),
            "by_error_type": by_error_type(rows, judgements)}


def by_error_type(rows: list[dict], judgements: list[dict]) -> dict[str, dict[str, Any]]:
    """Of the wrong paths of each true error type: how many, and the share whose first wrong step
    the critic named (where the critic fails: in what it must see, or in what it must compute)."""
    found: dict[str, list[bool]] = {}
    for row, j in zip(rows, judgements, strict=True):
        if row["verdict"] == "incorrect":
            step = j["first_wrong_step"] if j["verdict"] == "incorrect" else None
            found.setdefault(row["error_type"] or "unknown", []).append(step == row["first_wrong_step"])
    return {kind: {"paths": len(hits), "first_wrong_step_accuracy": sum(hits) / len(hits)}
            for kind, hits in sorted(found.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer problems and steps (a smoke run)")
    parser.add_argument("--problems", type=int, help="synthetic problems to search (default 2000; quick 400)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 1600; quick 400)")
    parser.add_argument("--refine-problems", type=int, help="fresh problems refined (default 200; quick 60)")
    parser.add_argument("--curve-points", type=int, default=4, help="checkpoints on the learning curve")
    parser.add_argument("--hidden", type=int, default=TinyModelConfig.hidden_size, help="model width")
    parser.add_argument("--layers", type=int, default=TinyModelConfig.num_layers, help="model layers")
    parser.add_argument("--vision-dim", type=int, default=TinyModelConfig.vision_embed_dim,
                        help="vision encoder width")
    parser.add_argument("--vision-depth", type=int, default=TinyModelConfig.vision_depth,
                        help="vision encoder blocks")
    parser.add_argument("--init-model", type=Path, default=SEEING_BASE,
                        help="start every fit from this local HF model (default: the shipped seeing base, "
                             "models/tiny-seeing)")
    parser.add_argument("--random-model", action="store_true",
                        help="start from a random-weight tiny VLM built from the size flags instead")
    parser.add_argument("--freeze", nargs="*", default=list(TrainConfig.freeze),
                        choices=["vision", "projector", "language"],
                        help="parts left untrained in both fits (train.freeze; default: its default)")
    parser.add_argument("--no-text-only", action="store_true",
                        help="skip the text-only fit (a point of a model-size sweep: half the time)")
    parser.add_argument("--no-error-per-problem", type=int,
                        help="fully correct paths per tree in the dataset (annotate.mining; default: "
                             "its default)")
    parser.add_argument("--save-critic", type=Path,
                        help="copy the trained critic (a Hugging Face folder) here, to try it in other loops")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n_problems = args.problems or (400 if args.quick else 2000)
    steps = args.steps or (400 if args.quick else 1600)
    n_refine = args.refine_problems or (60 if args.quick else 200)

    cfg = dataset_config(args.no_error_per_problem)
    model_cfg = TinyModelConfig(hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                                num_layers=args.layers, num_heads=max(2, args.hidden // 32),
                                vision_embed_dim=args.vision_dim, vision_depth=args.vision_depth,
                                vision_heads=max(2, args.vision_dim // 32))
    refine_problems = list(generate_problems(n_refine, seed=900_001, families=cfg.tasks.families,
                                             difficulties=cfg.tasks.difficulties,
                                             image_size=cfg.tasks.image_size))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        splits = build_dataset(cfg, n_problems, tmp)
        data_seconds = time.perf_counter() - start
        held_out = splits["validation"] + splits["test"]  # the problems no fit trains on
        solutions = [critique_solution(r) for r in held_out]
        print(f"dataset: {n_problems} problems → " + ", ".join(f"{s} {len(r)}" for s, r in splits.items())
              + f" examples ({data_seconds:.0f} s)", flush=True)
        model = (build_tiny_vlm(model_cfg, tmp / "tiny-vlm") if args.random_model
                 else args.init_model.resolve())
        tcfg = TrainConfig(init_model=str(model), num_workers=1, cpus_per_worker=1.0, learning_rate=3e-3,
                           warmup_steps=max(steps // 40, 1), max_steps=steps,
                           checkpoint_every=max(steps // args.curve_points, 1), tokens_per_step=4096,
                           freeze=tuple(args.freeze), wandb_project="")
        fits = {}
        for name, text_only in (("critic", False), ("text_only", True))[:1 if args.no_text_only else 2]:
            summary, exported = fit(cfg, dataclasses.replace(tcfg, text_only=text_only), tmp / "dataset",
                                    tmp / name)
            losses = summary.losses
            print(f"{name}: {steps} steps in {summary.seconds:.0f} s, loss {losses[0]:.3f} → "
                  f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", flush=True)
            curve = []
            for step, path in exported:
                start = time.perf_counter()
                judgements = judge(solutions, critic_engine(path, tcfg), CRITIQUE_TOKENS, progress=False,
                                   text_only=text_only, score_steps=step == exported[-1][0])
                metrics = judged(judgements, held_out)
                curve.append({"step": step, "token_budget": step * tcfg.tokens_per_step, **metrics})
                print(f"  step {step}: ProcessBench F1 {metrics['processbench_f1']:.3f}, verdict "
                      f"{metrics['verdict_accuracy']:.3f}, first wrong step "
                      f"{metrics['first_wrong_step_accuracy']:.3f} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
            fits[name] = {"train_seconds": round(summary.seconds, 1), "loss_first": losses[0],
                          "loss_last20": sum(losses[-20:]) / len(losses[-20:]),
                          "tokens_per_s": summary.metrics.get("tokens_per_s"),
                          "params": summary.metrics.get("total_params"), "curve": curve,
                          "held_out": curve[-1], "final": exported[-1][1]}
        start = time.perf_counter()
        refinement = {
            "critic": refine_gain(cfg, critic_engine(fits["critic"]["final"], tcfg), refine_problems),
            "oracle": refine_gain(cfg, RuleCriticEngine(), refine_problems),
            "blind": refine_gain(cfg, BlindCriticEngine(), refine_problems),
        }
        refine_seconds = time.perf_counter() - start
        start = time.perf_counter()
        blind_problems = [dataclasses.replace(p, image=None) for p in refine_problems]
        selection = {
            "critic": best_of_n(cfg, critic_engine(fits["critic"]["final"], tcfg), refine_problems),
            **({} if args.no_text_only else {"text_only": best_of_n(
                cfg, critic_engine(fits["text_only"]["final"], tcfg), blind_problems)}),
            "oracle": best_of_n(cfg, RuleCriticEngine(), refine_problems),
        }
        best_of_n_seconds = time.perf_counter() - start
        if args.save_critic:
            shutil.copytree(fits["critic"]["final"], args.save_critic, dirs_exist_ok=True)
    for f in fits.values():
        f.pop("final")
    critic, text_only = fits["critic"]["held_out"], fits.get("text_only", {}).get("held_out")
    baseline = frequency_baselines(splits["train"], held_out)
    results = {
        "problems": n_problems, "examples": {s: len(r) for s, r in splits.items()}, "steps": steps,
        "model": (dataclasses.asdict(model_cfg) if args.random_model
                  else {"init_model": str(args.init_model)}),
        "freeze": list(tcfg.freeze),
        "no_error_per_problem": cfg.annotate.mining.no_error_per_problem,
        "data_seconds": round(data_seconds, 1),
        "refine_seconds": round(refine_seconds, 1), "refine_problems": n_refine,
        "best_of_n_seconds": round(best_of_n_seconds, 1),
        "processbench_f1": critic["processbench_f1"], "verdict_accuracy": critic["verdict_accuracy"],
        "first_wrong_step_accuracy": critic["first_wrong_step_accuracy"],
        "verifier_auc": critic["verifier_auc"],
        "verifier_auc_within_problem": critic["verifier_auc_within_problem"],
        "refine_gain": refinement["critic"]["refine_gain"],
        "baselines": {**baseline, "text_only": text_only,
                      "oracle_refine_gain": refinement["oracle"]["refine_gain"],
                      "blind_refine_gain": refinement["blind"]["refine_gain"]},
        "best_of_n_gain": selection["critic"]["gain"],
        "fits": fits, "refinement": refinement, "best_of_n": selection,
    }
    print(f"\nheld-out splits: {len(held_out)} paths; refinement: {n_refine} fresh problems")
    print(f"{'figure':<26} {'critic':>8} {'text-only':>10} {'frequencies':>12}")
    for name, key, frequency in (
        ("ProcessBench F1", "processbench_f1", baseline["constant_processbench_f1"]),
        ("verdict accuracy", "verdict_accuracy", baseline["majority_verdict_accuracy"]),
        ("first-wrong-step accuracy", "first_wrong_step_accuracy", baseline["most_common_step_accuracy"]),
        ("parse rate", "parse_rate", None),
        ("verifier AUC", "verifier_auc", None),
        ("  within a problem", "verifier_auc_within_problem", None),
    ):
        blind = text_only and text_only[key]
        print(f"{name:<26} {pct(critic[key]):>8} {pct(blind):>10} {pct(frequency):>12}")
    print("first-wrong-step accuracy by true error type (critic / text-only): " + "; ".join(
        f"{kind} {pct(v['first_wrong_step_accuracy'])} / "
        f"{pct(text_only and text_only['by_error_type'][kind]['first_wrong_step_accuracy'])} of {v['paths']}"
        for kind, v in critic["by_error_type"].items()))
    r = refinement["critic"]
    print(f"refinement with the critic: {r['single_pass_accuracy']:.1%} → {r['final_accuracy']:.1%} "
          f"(gain {r['refine_gain']:+.1%}); with the oracle: {refinement['oracle']['refine_gain']:+.1%}; "
          f"with the blind critic (always revise): {refinement['blind']['refine_gain']:+.1%}")
    n_values = selection["critic"]["n"]
    print(f"\nbest-of-N accuracy on the {n_refine} fresh problems, N = {n_values}:")
    rows = [(f"{name}, by P(correct)", m["best_of_n_p_correct"]) for name, m in selection.items()]
    rows += [("critic, by min step soundness", selection["critic"]["best_of_n_min_step"]),
             ("majority vote", selection["critic"]["majority_vote"]),
             ("any sample correct", selection["critic"]["any_correct"])]
    for name, values in rows:
        print(f"  {name:<32} " + " ".join(f"{v:>6.1%}" for v in values))
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
