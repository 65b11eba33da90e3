"""Problems → MCTS trees → the MMC dataset, as a Ray job:

    ray job submit --working-dir . -- python jobs/build_dataset.py --out /mnt/runs/data --n 10000 \
        actor.kind=hf actor.model_path=/models/Qwen2-VL-7B-Instruct actor.resources.num_gpus=1

Writes OUT/problems.parquet (skipped when present, e.g. your own benchmark file copied there),
OUT/trees/ and OUT/mmc-dataset/; trailing KEY=VALUE arguments are config overrides.
"""

import argparse
import sys
from pathlib import Path

from mmc_ray.cli import main


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, help="problems to generate (default: tasks.n)")
    args, overrides = parser.parse_known_args(argv)
    problems = args.out / "problems.parquet"
    steps = [["search", "--problems", str(problems), "--out", str(args.out / "trees")],
             ["annotate", "--trees", str(args.out / "trees"), "--out", str(args.out / "mmc-dataset")]]
    if not problems.exists():
        count = ["--n", str(args.n)] if args.n else []
        steps.insert(0, ["tasks", "generate", "--out", str(problems), *count])
    for step in steps:
        if code := main([*step, *overrides]):
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
