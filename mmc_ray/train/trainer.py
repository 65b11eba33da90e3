"""Critic training: Ray Data streams dataset rows into Ray Train `TorchTrainer` workers that run
DeepSpeed ZeRO (stage 2 or 3; fp32 over gloo on CPU, bf16 on GPU).

Each worker builds examples from its shard (`ExampleBuilder`: loss on the critique only; `data.py`)
and trains with the one step recipe (`step.py`). Every `checkpoint_every` steps and at the end it
checkpoints (`checkpoints.py`); `resume` (or Ray Train's own recovery, `train.max_failures`)
continues from the newest complete checkpoint at the same data position, so the loss curve goes on
as if never stopped. The result is exported as a Hugging Face folder (`export.py`) that `HFEngine`
loads by path. This module is the worker loop and the driver around it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmc_ray.config import Config, TrainConfig
from mmc_ray.errors import MissingInput
from mmc_ray.ray_runtime import require_resources
from mmc_ray.store.layout import export_dir, split_shards
from mmc_ray.store.shards import verified_shards
from mmc_ray.train.checkpoints import RUN_NAME, STATE_FILE, latest_checkpoint, restore, save_and_report
from mmc_ray.train.data import ShardTables, micro_batches
from mmc_ray.train.export import export_hf
from mmc_ray.train.run_log import StepLog, driver_progress, model_flops_per_token
from mmc_ray.train.step import freeze_parts, optimizer_and_schedule, train_step

logger = logging.getLogger(__name__)
READ_CPUS = 0.25  # a Parquet read task is light; Ray Data's default of 1 CPU stalls on a small box


class TrainHooks:
    """Where a caller (a benchmark, a test) looks into a fit without replacing its parts. A copy
    runs on every Ray Train worker, so a subclass must pickle (define it at module level). The
    defaults observe nothing and checkpoint as a fit always does."""

    def on_batch(self, batch: dict[str, Any], tokens: int) -> None:
        """A micro-batch about to be trained on (`tokens` of its tokens count toward the loss)."""

    def on_step(self, step: int, tokens: int, values: dict[str, float]) -> None:
        """An optimizer step is done (its loss all-reduced): `values` as logged."""

    def checkpoint(self, engine: Any, step: int, curve: list[float], metrics: dict[str, Any], rank: int,
                   world: int) -> None:
        """Every `checkpoint_every` steps and at the end: save and report to Ray Train."""
        save_and_report(engine, step, curve, metrics, rank, world)


@dataclass
class _Worker:
    """One Ray Train worker's model, DeepSpeed engine and schedule."""

    vlm: Any
    model: Any
    engine: Any
    scheduler: Any
    trainable: int
    total: int


def _set_up(cfg: TrainConfig, rank: int) -> _Worker:
    import deepspeed
    import numpy as np
    import torch

    from mmc_ray.models.loading import load_vlm
    from mmc_ray.train.packed_attention import use_packed_attention

    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    vlm = load_vlm(cfg.init_model, device="cuda" if cfg.use_gpu else "cpu", dtype="float32",
                   min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    model = vlm.model.train()
    if cfg.pack:
        use_packed_attention(model)
    trainable, total = freeze_parts(model, cfg.freeze)
    trained = model  # what the engine trains; `model` stays the bare VLM the collator reads
    if cfg.lora.enabled:
        from mmc_ray.train.lora import with_adapter

        trained = with_adapter(model, cfg.lora)
        trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    optimizer, scheduler = optimizer_and_schedule(trained, cfg)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=trained, optimizer=optimizer, lr_scheduler=scheduler, config={
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.use_gpu},
            "steps_per_print": 10**9,
        })
    return _Worker(vlm, model, engine, scheduler, trainable, total)


@dataclass
class _Counts:
    """Tokens, samples and time spent waiting for data since this fit (or resume) started."""

    tokens: int = 0
    samples: int = 0
    data_wait_s: float = 0.0


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import numpy as np
    import ray.train
    import torch

    from mmc_ray.train.examples import ExampleBuilder

    cfg: TrainConfig = config["train"]
    hooks: TrainHooks = config["hooks"]
    tables = ShardTables(ray.train.get_dataset_shard("train"))  # the upstream runs while the model loads
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    worker = _set_up(cfg, rank)
    step, curve = restore(worker.engine, config["resume_from"], rank)  # curve: all-rank mean loss per step
    resumed_from = step
    builder = ExampleBuilder(worker.vlm, cfg.max_seq_len, cfg.text_only)
    stream = micro_batches(tables, builder, cfg, worker.model, worker.vlm.image_token_id,
                           worker.vlm.tokenizer.pad_token_id, rank)
    for _ in range(step * cfg.grad_accum):  # data position: skip what the resumed steps consumed
        next(stream)
    flops_per_token = model_flops_per_token(worker.total, worker.trainable)
    log = StepLog(rank == 0, cfg.wandb_project, config["wandb_dir"],
                  {**dataclasses.asdict(cfg), "world_size": world, "resumed_from_step": resumed_from},
                  board=config["board"])
    counts = _Counts()
    start = time.perf_counter()
    while step < cfg.max_steps:
        done = train_step(worker.engine, stream, cfg.grad_accum, hooks.on_batch)
        counts.tokens, counts.samples = counts.tokens + done.tokens, counts.samples + done.samples
        counts.data_wait_s += done.data_wait_s
        step_loss, step_tokens = done.loss, done.tokens
        step += 1
        torch.distributed.all_reduce(step_loss)
        curve.append(step_loss.item() / world)
        elapsed = time.perf_counter() - start
        values = {"loss": curve[-1], "learning_rate": worker.scheduler.get_last_lr()[0],
                  "tokens_per_s": counts.tokens / elapsed, "samples_per_s": counts.samples / elapsed,
                  "data_wait_share": counts.data_wait_s / elapsed}
        if cfg.peak_tflops > 0:
            values["mfu"] = flops_per_token * counts.tokens / elapsed / (cfg.peak_tflops * 1e12)
        log.log(step, step_tokens, values)
        hooks.on_step(step, step_tokens, values)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            metrics = {
                **values,
                "step": step,
                "resumed_from_step": resumed_from,
                "loss": float(np.mean(curve[-cfg.checkpoint_every:])),
                "model_tflops_per_s": flops_per_token * counts.tokens / elapsed / 1e12,
                "trainable_params": worker.trainable,
                "total_params": worker.total,
                "examples_built": builder.stats.built,
                "examples_skipped": sum(builder.stats.skipped.values()),
                "images_resized": builder.stats.resized_images,
                "wandb_run_dir": log.wandb_run_dir,
            }
            hooks.checkpoint(worker.engine, step, curve, metrics, rank, world)
    log.finish()


@dataclass
class TrainSummary:
    metrics: dict[str, Any]        # of the final step
    losses: list[float]            # the loss of every step from step 1, across resumes
    checkpoint: Path
    exported: Path
    seconds: float


def train(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          stream: Any = None, progress: bool = True, hooks: TrainHooks | None = None,
          on_progress: Callable[[dict[str, float]], None] | None = None) -> TrainSummary:
    """Fit on `data_dir` (an MMC dataset folder for the critic; a problems folder for actor SFT),
    or on `stream`, a `ray.data.Dataset` of the same rows still being produced upstream. `hooks`
    observe the fit on its workers (see `TrainHooks`); `on_progress` gets each step's values on the
    driver instead of the progress bar (a caller showing several stages on one line)."""
    from mmc_ray.ray_runtime import init_ray

    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    tcfg = cfg.train
    files = (sorted(data_dir.glob("*.parquet")) if tcfg.task == "actor-sft"
             else split_shards(data_dir, "train"))
    files = verified_shards(files)  # before Ray starts: a damaged shard is named, not a worker's traceback
    if not files and stream is None:
        raise MissingInput(f"no training data in {data_dir} (critic, annotator: data/train-*.parquet; "
                                f"actor-sft: problems *.parquet)")
    if stream is None and (rows := _rows(files)) < tcfg.num_workers:
        # Every worker needs a row of its own; a few rows on fewer workers is still the same fit.
        logger.warning("train: %d rows for train.num_workers=%d: training on %d worker(s)", rows,
                       tcfg.num_workers, max(rows, 1))
        tcfg = replace(tcfg, num_workers=max(rows, 1))
    if not (Path(tcfg.init_model) / "config.json").exists():
        raise MissingInput(f"no model at {tcfg.init_model} (train.init_model)")
    resume_from = latest_checkpoint(out_dir) if resume else None
    if resume and resume_from is None:
        raise MissingInput(f"--resume: no checkpoint under {out_dir}/{RUN_NAME}-*")
    # DeepSpeed compiles a CPU comm op at first init: cache it (workers of a local Ray inherit this).
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".torch_extensions").resolve()))
    init_ray()
    require_resources(f"train ({tcfg.num_workers} workers x {tcfg.cpus_per_worker:g} CPU)",
                      {"CPU": tcfg.num_workers * tcfg.cpus_per_worker}, spare={"CPU": READ_CPUS},
                      fix="Ray Data needs the spare CPU to read the dataset: lower train.cpus_per_worker")
    if tcfg.node_resource:
        require_resources("train", {tcfg.node_resource: float(tcfg.num_workers)},
                          fix=f"start nodes with the custom resource {tcfg.node_resource} "
                              f"(ray start --resources) or clear train.node_resource")
    start = time.perf_counter()
    with driver_progress(tcfg.max_steps, progress, on_progress=on_progress) as board:
        result = fit(tcfg, out_dir, files, resume_from=resume_from, board=board, stream=stream, hooks=hooks)
    checkpoint = Path(result.checkpoint.path)
    exported = export_hf(checkpoint, tcfg, export_dir(out_dir))
    losses = json.loads((checkpoint / STATE_FILE).read_text())["losses"]
    return TrainSummary(dict(result.metrics or {}), losses, checkpoint, exported, time.perf_counter() - start)


def _rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def fit(tcfg: TrainConfig, out_dir: Path, files: list[Path], *, resume_from: Path | None = None,
        board: Any = None, stream: Any = None, hooks: TrainHooks | None = None) -> Any:
    """One Ray Train run on `files` (or `stream`) into `out_dir`; returns Ray Train's `Result`.
    `train` is what users call: it checks the inputs and the cluster, shows progress and exports."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Files are handed over in their order, not as their reads finish: a resume's data-position skip
    # then skips what the killed run consumed, and two fits of one config see one stream. A growing
    # stream has no fixed order to keep, and waiting on its slowest block would stall training.
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = stream is None

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": replace(tcfg, init_model=str(Path(tcfg.init_model).resolve())),
                           "resume_from": None if resume_from is None else str(resume_from),
                           "wandb_dir": str(out_dir), "board": board, "hooks": hooks or TrainHooks()},
        scaling_config=ScalingConfig(num_workers=tcfg.num_workers, use_gpu=tcfg.use_gpu,
                                     resources_per_worker={"CPU": tcfg.cpus_per_worker,
                                                           **({tcfg.node_resource: 1.0} if tcfg.node_resource
                                                              else {})}),
        # One run name per fit: a resumed fit is a new run that starts from the old checkpoint.
        run_config=RunConfig(storage_path=str(out_dir), name=f"{RUN_NAME}-{time.strftime('%Y%m%d-%H%M%S')}",
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=tcfg.max_failures)),
        datasets={"train": stream if stream is not None else ray.data.read_parquet(
            [str(f) for f in files], num_cpus=READ_CPUS)},
        dataset_config=DataConfig(execution_options=ingest),
    )
    return trainer.fit()


