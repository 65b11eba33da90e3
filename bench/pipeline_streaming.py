"""One pipeline round, streamed vs stage by stage: search → annotate → train.

Same config, same problems, fresh output folders, one local Ray. Stage by stage is what the single
commands do (each writes everything, the next reads it); streamed is `pipeline.streaming=true`
(one Ray Data graph feeding the trainer). Reported: wall time of each and their ratio.

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
from mmc_ray.pipeline import stages
from mmc_ray.pipeline.streaming import streamed_round


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--actor", choices=["simulated", "hf"], default="simulated")
    args = parser.parse_args(argv)
    n, steps = (64, 40) if args.quick else (128, 120)
    from mmc_ray.ray_runtime import init_ray

    init_ray()
    results: dict = {"config": {"problems": n, "train_steps": steps, "actor": args.actor}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_vlm(load_config().tiny_model, root / "tiny-vlm")
        cfg = load_config(overrides=[f"tasks.n={n}", f"train.max_steps={steps}",
                                     f"train.checkpoint_every={steps}", f"train.init_model={model}",
                                     f"actor.kind={args.actor}", f"actor.model_path={model}"])
        problems = root / "problems.parquet"
        with contextlib.redirect_stdout(io.StringIO()):
            stages.write_tasks(cfg.tasks, problems)
        for name in ("stage_by_stage", "streamed"):
            out = root / name
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                if name == "streamed":
                    summary = streamed_round(cfg, problems, out / "trees", out / "mmc-dataset",
                                             out / "critic")
                else:
                    stages.search(cfg, problems, out / "trees")
                    stages.annotate(cfg, out / "trees", out / "mmc-dataset")
                    summary = stages.train(cfg, out / "mmc-dataset", out / "critic")
            results[name] = {"seconds": round(time.perf_counter() - start, 1),
                             "train_seconds": round(summary.seconds, 1),
                             "steps": summary.metrics.get("step"),
                             "final_loss": round(summary.metrics["loss"], 4)}
    results["ratio"] = round(results["streamed"]["seconds"] / results["stage_by_stage"]["seconds"], 3)
    print(f"{'mode':<15} {'wall s':>8} {'train s':>8} {'steps':>6} {'loss':>8}")
    for name in ("stage_by_stage", "streamed"):
        r = results[name]
        print(f"{name:<15} {r['seconds']:>8} {r['train_seconds']:>8} {r['steps']:>6} {r['final_loss']:>8}")
    print(f"streamed / stage-by-stage wall time: {results['ratio']}")
    write_results(results, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
