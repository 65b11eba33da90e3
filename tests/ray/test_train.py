"""Critic training on a real local Ray: 2 CPU workers running DeepSpeed ZeRO over gloo."""

import dataclasses

import pytest

from mmc_ray.config import Config, SearchConfig, SimulatorConfig
from mmc_ray.engines.base import GenerationRequest
from mmc_ray.engines.hf import HFEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.pipeline.annotate import annotate_to_dir
from mmc_ray.pipeline.dispatch import LocalDispatcher
from mmc_ray.pipeline.search import search_to_dir
from mmc_ray.tasks.generator import generate_problems
from mmc_ray.train.trainer import latest_checkpoint, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("critic-data")
    search_to_dir(list(generate_problems(12, seed=41)),
                  LocalDispatcher(SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.3))),
                  SearchConfig(num_simulations=6, rollouts_per_node=2), root / "trees", progress=False)
    cfg = Config()
    cfg = dataclasses.replace(cfg, annotate=dataclasses.replace(cfg.annotate, split_fractions=(1.0, 0.0, 0.0)))
    annotate_to_dir(root / "trees", root / "ds", cfg, local=True, progress=False)
    return root / "ds"


def train_cfg(model, **changes):
    cfg = Config()
    base = dict(init_model=str(model), num_workers=2, cpus_per_worker=0.5, max_steps=16, checkpoint_every=8,
                learning_rate=5e-3, warmup_steps=2, tokens_per_step=2048, max_seq_len=2048)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **{**base, **changes}))


def test_zero2_training_lowers_the_loss_and_exports_a_working_model(ray_local, tiny_vlm_path, small_dataset, tmp_path):
    summary = train(train_cfg(tiny_vlm_path), small_dataset, tmp_path / "run")
    losses = [h["loss"] for h in summary.history]
    assert [h["step"] for h in summary.history] == [8, 16]
    assert losses[-1] < losses[0] - 0.5, losses  # overfitting a small set: the loss falls clearly
    assert summary.metrics["examples_skipped"] == 0 and summary.metrics["trainable_params"] > 0
    engine = HFEngine.from_path(summary.exported, device="cpu", dtype="float32")
    messages = ({"role": "user", "content": "Check this solution."},)
    [result] = engine.generate([GenerationRequest(messages=messages, max_new_tokens=8, temperature=0.0)])
    assert result.completions[0].completion_tokens > 0


def test_resume_continues_from_the_newest_checkpoint(ray_local, tiny_vlm_path, small_dataset, tmp_path):
    out = tmp_path / "run"
    first = train(train_cfg(tiny_vlm_path, max_steps=8, checkpoint_every=4), small_dataset, out)
    assert first.metrics["step"] == 8
    assert latest_checkpoint(out) is not None
    resumed = train(train_cfg(tiny_vlm_path, max_steps=12, checkpoint_every=4), small_dataset, out, resume=True)
    assert first.metrics["resumed_from_step"] == 0
    assert resumed.metrics["step"] == 12 and resumed.metrics["resumed_from_step"] == 8  # not from scratch
    assert resumed.metrics["loss"] < first.history[0]["loss"]


def test_zero3_with_a_frozen_vision_tower_exports(ray_local, tiny_vlm_path, small_dataset, tmp_path):
    summary = train(train_cfg(tiny_vlm_path, zero_stage=3, max_steps=4, checkpoint_every=4, freeze=("vision",)),
                    small_dataset, tmp_path / "run")
    assert summary.metrics["trainable_params"] < summary.metrics["total_params"]
    assert (summary.exported / "config.json").exists()
    HFEngine.from_path(summary.exported, device="cpu")


def test_reserving_every_cpu_is_refused(ray_local, tiny_vlm_path, small_dataset, tmp_path):
    with pytest.raises(RuntimeError, match="leaving none for Ray Data"):
        train(train_cfg(tiny_vlm_path, cpus_per_worker=1.0), small_dataset, tmp_path / "run")
