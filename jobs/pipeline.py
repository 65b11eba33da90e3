"""The whole pipeline as a Ray job:

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/pipeline.py --out /mnt/runs/pipeline --rounds 2 train.init_model=/models/Qwen2-VL-2B

Arguments are those of `mmc-ray pipeline`. The job runner sets RAY_ADDRESS, so every stage runs on
the cluster the job was submitted to.
"""

import sys

from mmc_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
