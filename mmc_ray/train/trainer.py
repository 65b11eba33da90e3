"""Critic training: Ray Data streams dataset rows into Ray Train `TorchTrainer` workers that run
DeepSpeed ZeRO (stage 2 or 3; fp32 over gloo on CPU, bf16 on GPU).

Each worker builds examples from its shard (`ExampleBuilder`: loss on the critique only), groups them
by a token budget (packed, or length-bucketed padding) and trains. Every `checkpoint_every` steps and
at the end, each rank saves its DeepSpeed state and rank 0 the trainer state (step, RNG) into one Ray
checkpoint, marked complete once every rank has uploaded its part. `resume` (or Ray Train's own
recovery, `train.max_failures`) continues from the newest complete checkpoint at the same data
position, so the loss curve goes on as if never stopped. `export_hf` gathers the (ZeRO-3
partitioned) weights into a Hugging Face folder that `HFEngine` loads by path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmc_ray.background import BackgroundTask
from mmc_ray.config import Config, TrainConfig
from mmc_ray.errors import MissingInput
from mmc_ray.ray_runtime import require_resources
from mmc_ray.store.layout import export_dir, split_shards
from mmc_ray.store.shards import verified_shards
from mmc_ray.train.run_log import StepLog, driver_progress, model_flops_per_token

log = logging.getLogger(__name__)
DS_TAG = "ds"
STATE_FILE = "trainer_state.json"
COMPLETE_MARKER = "COMPLETE"  # written after every rank's part of a checkpoint is uploaded
RUN_NAME = "ray-train"
READ_CPUS = 0.25  # a Parquet read task is light; Ray Data's default of 1 CPU stalls on a small box
POOL_STEPS = 4  # examples are grouped into steps over a pool of about this many steps' tokens


def freeze_parts(model: Any, parts: tuple[str, ...]) -> tuple[int, int]:
    """Freeze the named parts of a Qwen2-VL model; returns (trainable, total) parameter counts."""
    for name, param in model.named_parameters():
        is_projector = ".visual.merger." in f".{name}"
        is_vision = ".visual." in f".{name}" and not is_projector
        part = "projector" if is_projector else "vision" if is_vision else "language"
        param.requires_grad = part not in parts
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


class ShardTables:
    """The Arrow tables of a worker's dataset shard, read by a background thread from the moment
    this is made, and kept for later epochs.

    Reading starts before the model loads, so a streamed upstream (search, annotation) runs
    meanwhile instead of waiting for the first training step to ask. The tables are replayed for
    later epochs: Ray Data's split shards advance epochs in step across workers, and workers here
    finish epochs at different times."""

    def __init__(self, shard: Any, rows_per_table: int = 64) -> None:
        self._tables: list[Any] = []
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        # A read error is raised to the training loop when it gets there.
        self._reader = BackgroundTask("shard-reader", lambda: self._read(shard, rows_per_table),
                                      on_exit=self._finished)

    def _read(self, shard: Any, rows_per_table: int) -> None:
        # Blocks as they come (a streamed upstream sends a few rows at a time), cut to size.
        for block in shard.iter_batches(batch_size=None, batch_format="pyarrow"):
            for start in range(0, block.num_rows, rows_per_table):
                with self._changed:
                    self._tables.append(block.slice(start, rows_per_table))
                    self._changed.notify_all()

    def _finished(self, error: BaseException | None) -> None:
        with self._changed:
            self._error, self._done = error, True
            self._changed.notify_all()

    def __iter__(self) -> Iterator[Any]:
        """One epoch: every table, waiting for those still being read."""
        index = 0
        while True:
            with self._changed:
                self._changed.wait_for(lambda i=index: i < len(self._tables) or self._done)
                if index == len(self._tables):
                    if self._error is not None:
                        raise self._error
                    return
                table = self._tables[index]
            yield table
            index += 1


def micro_batches(tables: Iterable[Any], builder: Any, cfg: TrainConfig, model: Any,
                  image_token_id: int, pad_token_id: int,
                  rank: int = 0) -> Iterator[tuple[dict[str, Any], int, int]]:
    """Endless (epoch after epoch over `tables`) stream of (model inputs, real tokens, samples)
    under the token budget, grouped across tables (`pooled_groups`), so the few rows at a time of a
    streamed upstream still make full steps. Packs are drawn in a shuffled order seeded by
    (`cfg.seed`, `rank`): the same stream on a resume, different packs each epoch."""
    from mmc_ray.train.collate import collate_packed, collate_padded
    from mmc_ray.train.packing import plan_packs, pooled_groups, token_budget_batches

    rng = random.Random(f"{cfg.seed}:{rank}")

    def plan(lengths: list[int]) -> list[list[int]]:
        if cfg.pack:
            return plan_packs(lengths, cfg.tokens_per_step, rng)
        return token_budget_batches(lengths, cfg.tokens_per_step)

    while True:
        produced = False
        examples = (builder.build_all(table.to_pylist(), cfg.task) for table in tables)
        for chosen in pooled_groups(examples, len, plan, POOL_STEPS * cfg.tokens_per_step):
            batch = (collate_packed(chosen, model, image_token_id) if cfg.pack
                     else collate_padded(chosen, pad_token_id, image_token_id))
            produced = True
            yield batch, sum(len(ex) for ex in chosen), len(chosen)
        if not produced:
            raise RuntimeError(
                f"no trainable examples in this worker's data (skips: {builder.stats.skipped})")


def _lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def optimizer_and_schedule(model: Any, cfg: TrainConfig) -> tuple[Any, Any]:
    """AdamW over the parameters left trainable, with warmup and cosine decay."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))


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
    optimizer, scheduler = optimizer_and_schedule(model, cfg)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config={
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.use_gpu},
            "steps_per_print": 10**9,
        })
    return _Worker(vlm, model, engine, scheduler, trainable, total)


def _restore(engine: Any, resume_from: str | None, rank: int) -> tuple[int, list[float]]:
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


@dataclass
class _Counts:
    """Tokens, samples and time spent waiting for data since this fit (or resume) started."""

    tokens: int = 0
    samples: int = 0
    data_wait_s: float = 0.0


def _optimizer_step(engine: Any, stream: Iterator[tuple[dict[str, Any], int, int]], cfg: TrainConfig,
                    counts: _Counts, hooks: TrainHooks) -> tuple[Any, int]:
    """`grad_accum` micro-batches forward and backward; returns this rank's mean loss (a tensor)
    and the step's tokens."""
    import torch

    micro_losses = []
    step_tokens = 0
    for _ in range(cfg.grad_accum):
        fetched = time.perf_counter()
        batch, n_tokens, n_samples = next(stream)
        counts.data_wait_s += time.perf_counter() - fetched
        hooks.on_batch(batch, n_tokens)
        batch = {k: v.to(engine.device) if hasattr(v, "to") else v for k, v in batch.items()}
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        step_tokens += n_tokens
        counts.samples += n_samples
        micro_losses.append(loss.detach().float())
    counts.tokens += step_tokens
    return torch.stack(micro_losses).mean(), step_tokens


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
    step, curve = _restore(worker.engine, config["resume_from"], rank)  # curve: all-rank mean loss per step
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
        step_loss, step_tokens = _optimizer_step(worker.engine, stream, cfg, counts, hooks)
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


@dataclass
class TrainSummary:
    metrics: dict[str, Any]        # of the final step
    losses: list[float]            # the loss of every step from step 1, across resumes
    checkpoint: Path
    exported: Path
    seconds: float


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run in `out_dir` (by trainer step)."""
    found = [(json.loads((p / STATE_FILE).read_text())["step"], p)
             for p in out_dir.glob(f"{RUN_NAME}-*/checkpoint_*") if (p / COMPLETE_MARKER).exists()]
    return max(found)[1] if found else None


def train(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          stream: Any = None, progress: bool = True, hooks: TrainHooks | None = None,
          on_step: Callable[[dict[str, float]], None] | None = None) -> TrainSummary:
    """Fit on `data_dir` (an MMC dataset folder for the critic; a problems folder for actor SFT),
    or on `stream`, a `ray.data.Dataset` of the same rows still being produced upstream. `hooks`
    observe the fit on its workers (see `TrainHooks`); `on_step` gets each step's values on the
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
    with driver_progress(tcfg.max_steps, progress, on_step=on_step) as board:
        result = fit(tcfg, out_dir, files, resume_from=resume_from, board=board, stream=stream, hooks=hooks)
    checkpoint = Path(result.checkpoint.path)
    exported = export_hf(checkpoint, tcfg, export_dir(out_dir))
    losses = json.loads((checkpoint / STATE_FILE).read_text())["losses"]
    return TrainSummary(dict(result.metrics or {}), losses, checkpoint, exported, time.perf_counter() - start)


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


def export_hf(checkpoint: Path, tcfg: TrainConfig, out: Path) -> Path:
    """Gather the trained weights from a DeepSpeed checkpoint (any ZeRO stage) into a Hugging Face
    folder with the tokenizer and image processor, written atomically."""
    from transformers.utils import logging as hf_logging

    # The gather runs on CPU tensors wherever the fit ran: saying so spares DeepSpeed's accelerator
    # probe and its "no GPU found" warning; only for the import, so no process started later inherits it.
    user_chose = "DS_ACCELERATOR" in os.environ
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    finally:
        if not user_chose:
            os.environ.pop("DS_ACCELERATOR", None)

    with contextlib.redirect_stdout(io.StringIO()) as printed:  # DeepSpeed prints its progress
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DS_TAG)
    log.info("export: %s", " | ".join(printed.getvalue().split("\n")).strip(" |"))
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading and writing shards of a small model: no bars needed
    try:
        return save_hf(state, tcfg, out)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def save_hf(state: dict[str, Any], tcfg: TrainConfig, out: Path) -> Path:
    """`state` (a full model state dict) as a Hugging Face folder of `tcfg.init_model`'s model, with
    its tokenizer and the image processor under the fit's pixel budget, written atomically."""
    import shutil

    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(tcfg.init_model, local_files_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # tied lm_head may be absent
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tcfg.init_model, local_files_only=True).save_pretrained(tmp)
    AutoImageProcessor.from_pretrained(
        tcfg.init_model, local_files_only=True,
        size={"shortest_edge": tcfg.min_pixels, "longest_edge": tcfg.max_pixels}).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
