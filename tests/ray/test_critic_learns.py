"""Learnability: the training stack (examples, loss masking, packing, mrope positions, Ray Train with
DeepSpeed, export) must teach the tiny critic a judgement it can learn, not only the critique format.

The task: arithmetic problems whose only errors are wrong operations (the step's wording and symbol
contradict the question's: "Combine them: 22 - 12 = 10" where the question says add), visible in the
text. Greedy critiques of paths from problems the critic never saw must beat answering from label
frequencies by a wide margin. Before packs were shuffled (first-fit decreasing packed critiques of
like length, so of like verdict, together), this critic answered one verdict for every path."""

import dataclasses

import pyarrow.parquet as pq
import pytest

from mmc_ray.config import Config, SimulatorConfig, TinyModelConfig
from mmc_ray.engines.hf import HFEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.eval.metrics import frequency_baselines
from mmc_ray.eval.processbench import critic_bench_report
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.stages.annotate import annotate_to_dir
from mmc_ray.stages.critic_bench import critique_solution, judge
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.train.trainer import train
from mmc_ray.workers.dispatch import LocalDispatcher

pytestmark = pytest.mark.slow
WRONG_OPERATIONS_ONLY = SimulatorConfig(observe_error_rate=0.0, arithmetic_error_rate=0.0, operation_error_rate=0.3)


def mmc_rows(cfg: Config, folder, n: int, seed: int) -> list[dict]:
    problems = list(generate_problems(n, seed=seed, families=("arithmetic",), difficulties=(3, 4)))
    search_to_dir(problems, LocalDispatcher(SimulatedActorEngine(WRONG_OPERATIONS_ONLY)), cfg.search,
                  folder / "trees", progress=False)
    annotate_to_dir(folder / "trees", folder / "ds", cfg, local=True, progress=False)
    return [r for p in shard_paths(folder / "ds" / "data", "train") for r in pq.read_table(p).to_pylist()]


def test_the_tiny_critic_learns_to_find_a_text_visible_wrong_step(ray_local, tmp_path):
    base = Config()
    cfg = dataclasses.replace(base, annotate=dataclasses.replace(base.annotate, split_fractions=(1.0, 0.0, 0.0)))
    train_rows = mmc_rows(cfg, tmp_path / "train", 900, seed=3)
    held_out = mmc_rows(cfg, tmp_path / "held-out", 60, seed=4)
    model = build_tiny_vlm(TinyModelConfig(), tmp_path / "tiny-vlm")
    fit = dataclasses.replace(cfg, train=dataclasses.replace(
        base.train, init_model=str(model), num_workers=1, cpus_per_worker=1.0, max_steps=600,
        checkpoint_every=600, learning_rate=3e-3, warmup_steps=15, tokens_per_step=4096, wandb_project=""))
    summary = train(fit, tmp_path / "train" / "ds", tmp_path / "critic", progress=False)

    critic = HFEngine.from_path(summary.exported, device="cpu", dtype="float32", max_batch_size=16)
    report = critic_bench_report(judge([critique_solution(r) for r in held_out], critic, 120, progress=False,
                                         score_steps=False))
    pb, baseline = report.processbench.overall, frequency_baselines(train_rows, held_out)
    assert len(held_out) >= 60 and report.parse_rate > 0.9
    assert report.verdict_accuracy >= baseline["majority_verdict_accuracy"] + 0.25, (report, baseline)
    assert pb.acc_err >= baseline["most_common_step_accuracy"] + 0.15, (report, baseline)
    assert pb.f1 >= 0.6, (report, baseline)
