"""The GPU presets load, and each phase's GPU reservations fit the machine they are written for."""

from pathlib import Path

import pytest

from mmc_ray.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(("name", "gpus"), [("qwen2vl-7b-8xh100.yaml", 8), ("qwen2vl-2b-1gpu.yaml", 1),
                                           ("qwen2vl-2b-critic-8xh100.yaml", 8),
                                           ("qwen2vl-7b-lora-1gpu.yaml", 1)])
def test_preset_phases_fit_their_gpus(name, gpus):
    cfg = load_config(CONFIGS / name)
    actor = cfg.actor.resources.replicas * cfg.actor.resources.num_gpus
    critic = cfg.critic.resources.replicas * cfg.critic.resources.num_gpus
    trainer = cfg.train.num_workers if cfg.train.use_gpu else 0
    assert cfg.actor.device == "cuda" and cfg.train.use_gpu
    # every role that generates does it with vLLM on GPUs
    assert {cfg.actor.kind, cfg.critic.kind, cfg.annotator.kind, cfg.serve.backend} == {"vllm"}
    if cfg.pipeline.streaming:  # search and training run together
        assert actor + trainer <= gpus
    else:
        assert max(actor, trainer) <= gpus
    assert actor + critic <= gpus  # refinement


def test_lora_preset_trains_adapters_the_critic_engine_can_load():
    cfg = load_config(CONFIGS / "qwen2vl-7b-lora-1gpu.yaml")
    lora = cfg.train.lora
    assert lora.enabled and not lora.merged  # each round's critic is an adapter on the one base
    assert cfg.train.zero_stage == 2 and cfg.train.num_workers == 1
    assert cfg.critic.dtype == "bfloat16" and cfg.critic.model_path == cfg.train.init_model
    assert lora.r <= cfg.critic.vllm.max_lora_rank
    assert not cfg.pipeline.streaming  # one GPU: search, training and refinement take turns
