"""One pipeline round, streamed vs stage by stage: search → annotate → train.

Same config, same problems, fresh output folders, one local Ray. Stage by stage is what the single
commands do (each writes everything, the next reads it); streamed is `pipeline.streaming=true`
(the driver searches from the start, annotation reads the trees folder as it grows, and the trainer
the dataset folder). Reported: wall time of each and their ratio.

Settings. "local": every stage shares this machine's CPUs, so streaming can only hide the
(short) search and annotation behind training, and both compete for the same cores. "remote actor"
(one setting per `--call-latency` value): each policy call also waits that many seconds idle
(`actor.simulator.call_latency_s`), as a policy on its own GPU would; this is the deployment
streaming is for, emulated on one machine. The fit makes about one pass over the round's new
critiques, as a round does: streaming overlaps training with search only during the first pass,
since later passes need the whole set. A quarter of the problems are searched at a time
(`search.max_active_trees`), a new tree opening as one finishes: trees then finish steadily, where
all-at-once search finishes them together at the end.

    .venv/bin/python bench/pipeline_streaming.py --quick --json bench/results/pipeline_streaming_quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))

from _results import write_results

from mmc_ray.config import load_config
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.orchestration import commands
from mmc_ray.orchestration.streaming import streamed_round


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--actor", choices=["simulated", "hf"], default="simulated")
    parser.add_argument("--call-latency", type=float, nargs="*", default=[0.5, 1.0],
                        help="seconds each policy call waits, one remote-actor setting per value")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each mode per setting, alternating; the ratio is of the medians")
    args = parser.parse_args(argv)
    n, steps = (192, 16) if args.quick else (512, 48)  # about one pass over the round's critiques
    from mmc_ray.ray_runtime import init_ray

    init_ray()
    results: dict = {"config": {"problems": n, "train_steps": steps, "actor": args.actor,
                                "call_latency_s": args.call_latency, "repeats": args.repeats}}
    settings = {"local": 0.0} | {f"remote_actor_{s:g}s": s for s in args.call_latency if s > 0}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_vlm(load_config().tiny_model, root / "tiny-vlm")
        for setting, latency in settings.items():
            cfg = load_config(overrides=[f"tasks.n={n}", f"train.max_steps={steps}",
                                         f"train.checkpoint_every={steps}", "train.tokens_per_step=2048",
                                         f"search.max_active_trees={n // 4}",
                                         f"train.init_model={model}",
                                         f"actor.kind={args.actor}", f"actor.model_path={model}",
                                         f"actor.simulator.call_latency_s={latency}"])
            results[setting] = compare(cfg, root / setting, args.repeats)
    results["ratio"] = {setting: results[setting]["ratio"] for setting in settings}
    print(f"{'setting':<18} {'mode':<15} {'wall s':>8} {'train s':>8} {'steps':>6} {'loss':>8}")
    for setting in settings:
        for name in ("stage_by_stage", "streamed"):
            r = results[setting][name]
            print(f"{setting:<18} {name:<15} {r['seconds']:>8} {r['train_seconds']:>8} {r['steps']:>6} "
                  f"{r['final_loss']:>8}  runs: {r['runs_seconds']}")
        print(f"{setting}: streamed / stage-by-stage wall time {results[setting]['ratio']}")
    write_results(results, args.json)


def compare(cfg, root: Path, repeats: int) -> dict:
    """One round stage by stage, then streamed, `repeats` times, from the same problems into fresh
    folders; each mode's figures are those of its median run."""
    problems = root / "problems.parquet"
    with contextlib.redirect_stdout(io.StringIO()):
        commands.write_tasks(cfg.tasks, problems)
    runs: dict[str, list[dict]] = {"stage_by_stage": [], "streamed": []}
    for repeat in range(repeats):
        for name in runs:
            out = root / f"{name}-{repeat}"
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                if name == "streamed":
                    summary = streamed_round(cfg, problems, out / "trees", out / "mmc-dataset",
                                             out / "critic")
                else:
                    commands.search(cfg, problems, out / "trees")
                    commands.annotate(cfg, out / "trees", out / "mmc-dataset")
                    summary = commands.train(cfg, out / "mmc-dataset", out / "critic")
            runs[name].append({"seconds": round(time.perf_counter() - start, 1),
                               "train_seconds": round(summary.seconds, 1),
                               "steps": summary.metrics.get("step"),
                               "final_loss": round(summary.metrics["loss"], 4)})
    results = {}
    for name, done in runs.items():
        median = sorted(done, key=lambda r: r["seconds"])[(len(done) - 1) // 2]
        results[name] = {**median, "runs_seconds": [r["seconds"] for r in done]}
    results["ratio"] = round(results["streamed"]["seconds"] / results["stage_by_stage"]["seconds"], 3)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
