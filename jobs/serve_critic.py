"""Deploy (or hot-swap) the critic service on the cluster and return (arguments of `mmc-ray serve`):

    ray job submit --working-dir . -- python jobs/serve_critic.py --checkpoint /mnt/runs/critic/hf \
        serve.host=0.0.0.0 serve.num_gpus=1

The app keeps serving after the job ends; run it again with a new --checkpoint to swap critics.
"""

import sys

from mmc_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "--detach", *sys.argv[1:]]))
