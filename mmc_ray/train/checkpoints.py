"""Checkpoints of a fit: every rank's DeepSpeed state and rank 0's trainer state (step, RNG, loss
curve) in one Ray checkpoint, marked complete once every rank's part is uploaded; restoring one; and
finding a run's newest complete checkpoint on disk."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

DS_TAG = "ds"
STATE_FILE = "trainer_state.json"
COMPLETE_MARKER = "COMPLETE"  # written after every rank's part of a checkpoint is uploaded
RUN_NAME = "ray-train"


def restore(engine: Any, resume_from: str | None, rank: int) -> tuple[int, list[float]]:
    """The step to continue from and the loss curve so far (0 and [] for a fresh fit). A restart
    within this run (Ray Train's own recovery) wins over the --resume checkpoint."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and resume_from:
        checkpoint = ray.train.Checkpoint.from_directory(resume_from)
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as folder:
        engine.load_checkpoint(folder, tag=DS_TAG)
        state = json.loads(Path(folder, STATE_FILE).read_text())
        torch.set_rng_state(torch.tensor(state["torch_rng"][rank], dtype=torch.uint8))
        return state["step"], state["losses"][:state["step"]]


def _peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def save_and_report(engine: Any, step: int, curve: list[float], metrics: dict[str, Any], rank: int,
                    world: int) -> None:
    """Every rank's DeepSpeed state and rank 0's trainer state into one Ray checkpoint, marked complete
    once every rank's part is uploaded."""
    import ray.train
    import torch
    import torch.distributed as dist

    states: list[Any] = [None] * world
    dist.all_gather_object(states, (torch.get_rng_state().tolist(), _peak_memory_mb()))
    metrics = {**metrics, "peak_memory_mb": max(memory for _, memory in states)}
    name = f"checkpoint_{step:07d}"
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag=DS_TAG)
        if rank == 0:
            Path(folder, STATE_FILE).write_text(json.dumps(
                {"step": step, "torch_rng": [rng for rng, _ in states], "losses": curve,
                 "metrics": metrics}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=name)
    dist.barrier()  # every rank's upload has returned: the checkpoint is whole
    if rank == 0:
        storage = ray.train.get_context().get_storage()
        marker = f"{storage.experiment_fs_path}/{name}/{COMPLETE_MARKER}"
        with storage.storage_filesystem.open_output_stream(marker) as out:
            out.write(b"")


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run in `out_dir` (by trainer step)."""
    found = [(json.loads((p / STATE_FILE).read_text())["step"], p)
             for p in out_dir.glob(f"{RUN_NAME}-*/checkpoint_*") if (p / COMPLETE_MARKER).exists()]
    return max(found)[1] if found else None
