"""Critic training as a Ray job (arguments of `mmc-ray train`):

    ray job submit --working-dir . -- python jobs/train_critic.py --data /mnt/runs/data/mmc-dataset \
        --out /mnt/runs/critic --serve-app mmc-critic train.use_gpu=true train.num_workers=8
"""

import sys

from mmc_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
