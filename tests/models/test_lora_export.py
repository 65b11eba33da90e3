"""A LoRA critic's export (train/lora.py) on the tiny VLM, without a fit: the adapter's weights sit on
the language model's targets only, load back onto the base to write what the merged model writes,
and a broken adapter is refused naming what is wrong."""

import dataclasses
import json

import pytest
import torch

from mmc_ray.config import Config
from mmc_ray.config.sections import LoraConfig
from mmc_ray.models.adapters import MANIFEST, base_hash
from mmc_ray.train.export import save_model_folder
from mmc_ray.train.lora import (
    adapter_problems,
    export_lora,
    target_pattern,
    with_adapter,
)

LORA = LoraConfig(enabled=True, r=8, alpha=16)


def test_targets_are_the_language_models_projections_by_full_path():
    import re

    pattern = re.compile(target_pattern(LORA))
    assert pattern.fullmatch("model.language_model.layers.3.mlp.gate_proj")
    assert pattern.fullmatch("model.language_model.layers.0.self_attn.q_proj")
    assert not pattern.fullmatch("model.visual.blocks.0.mlp.gate_proj")  # Qwen2.5-VL's vision MLP names
    assert not pattern.fullmatch("model.visual.merger.mlp.0") and not pattern.fullmatch("lm_head")


def test_adapter_problems_name_vision_keys_and_missing_targets():
    keys = [f"base_model.model.model.language_model.layers.{i}.self_attn.{p}.lora_{ab}.weight"
            for i in range(2) for p in LORA.target_modules for ab in "AB"]
    assert adapter_problems(keys, LORA, layers=2) == []
    problems = adapter_problems([*keys[2:], "base_model.model.model.visual.blocks.0.mlp.fc1.lora_A.weight"],
                                LORA, layers=2)
    assert len(problems) == 2 and "vision-tower" in problems[0] and "layer 0 q_proj" in problems[1]


def test_a_trained_adapter_exports_checked_with_its_merged_model(tiny_vlm_path, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    tcfg = dataclasses.replace(Config().train, init_model=str(tiny_vlm_path), lora=LORA)
    model = with_adapter(AutoModelForImageTextToText.from_pretrained(tiny_vlm_path), LORA)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # as training leaves it: no longer the zero it starts from
            param.data.normal_(0, 0.5)
    adapter = tmp_path / "critic" / "adapter"
    save_model_folder(export_lora(model.state_dict(), tcfg, adapter), tcfg, tmp_path / "critic" / "hf")
    manifest = json.loads((adapter / MANIFEST).read_text())
    assert manifest["greedy_probe_matches_merged"] and manifest["base_sha256"] == base_hash(tiny_vlm_path)
    assert manifest["adapter_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    base, merged = load_file(str(tiny_vlm_path / "model.safetensors")), \
        load_file(str(tmp_path / "critic" / "hf" / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(".layers." in k and "visual" not in k for k in changed)  # the language model's


def test_an_export_that_does_not_match_the_model_is_refused(tiny_vlm_path, tmp_path):
    from transformers import AutoModelForImageTextToText

    tcfg = dataclasses.replace(Config().train, init_model=str(tiny_vlm_path), lora=LORA)
    state = with_adapter(AutoModelForImageTextToText.from_pretrained(tiny_vlm_path),
                         dataclasses.replace(LORA, target_modules=("q_proj",))).state_dict()
    with pytest.raises(RuntimeError, match="does not match a LoRA model"):
        export_lora(state, tcfg, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
