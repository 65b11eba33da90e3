"""LoRA critics (`train.lora`): a PEFT adapter on the language model's projections, trained by the same
fit as full fine-tuning (ZeRO, packing, checkpoints, resume), and exported as an adapter folder that
is checked before anything serves it.

The adapter goes on modules chosen by full path (`model.language_model.layers.<i>.(self_attn|mlp).
<proj>`), never by bare name: Qwen2-VL's vision MLP reuses MLP names, and vLLM serves LoRA on the
language model only. The export refuses an adapter with `visual.` keys, one missing a target module
of any layer, one whose size is not what its rank and targets make, and one whose greedy output on a
probe differs from the merged model's (a key-prefix mismatch loads as zero active modules without an
error in some servers: this catches it here).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from mmc_ray.config import TrainConfig
from mmc_ray.config.adapter_names import ADAPTER_WEIGHTS
from mmc_ray.config.sections import LoraConfig
from mmc_ray.models.adapters import MANIFEST, base_hash


def target_pattern(cfg: LoraConfig) -> str:
    """PEFT's `target_modules` as a full-match regex over module paths: the language model only."""
    projections = "|".join(sorted(cfg.target_modules))
    return rf"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{projections})"


def peft_config(cfg: LoraConfig) -> Any:
    import peft

    return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=target_pattern(cfg), bias="none")


def with_adapter(model: Any, cfg: LoraConfig) -> Any:
    """`model` wrapped with a fresh adapter; only the adapter's weights train."""
    import peft

    return peft.get_peft_model(model, peft_config(cfg))


def adapter_problems(keys: list[str], cfg: LoraConfig, layers: int) -> list[str]:
    """What is wrong with a saved adapter's weight names: vision keys, targets missing in a layer."""
    problems = [f"{k}: a vision-tower or projector weight (vLLM serves LoRA on the language model only)"
                for k in keys if ".visual." in f".{k}"]
    found = {(int(m[1]), m[2]) for k in keys
             if (m := re.search(r"language_model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_[AB]", k))}
    missing = [(layer, proj) for layer in range(layers) for proj in cfg.target_modules
               if (layer, proj) not in found]
    if missing:
        problems.append(f"{len(missing)} target modules have no adapter weights, e.g. layer {missing[0][0]} "
                        f"{missing[0][1]}")
    return problems


def expected_adapter_params(model: Any, cfg: LoraConfig) -> int:
    """r x (in + out) for every targeted projection of the base `model`."""
    import torch

    pattern = re.compile(target_pattern(cfg))
    return sum(cfg.r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and pattern.fullmatch(name))


def export_lora(state: dict[str, Any], tcfg: TrainConfig, adapter: Path, probe: Any = None) -> Any:
    """The adapter of a LoRA fit (`state`: the PEFT model's full state dict, as gathered from the
    checkpoint) as the folder `adapter` with a manifest, after the checks in the module docstring.
    Returns the base with the adapter merged in. `probe(model) -> token ids` runs the greedy check
    (default: a fixed text prompt)."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    cfg, init = tcfg.lora, Path(tcfg.init_model)
    base = AutoModelForImageTextToText.from_pretrained(init, local_files_only=True)
    expected = expected_adapter_params(base, cfg)
    model = with_adapter(base, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lora_" in k]:
        raise RuntimeError(f"the checkpoint does not match a LoRA model of {init}: missing "
                           f"{[k for k in missing if 'lora_' in k][:5]}, unexpected {unexpected[:5]}")
    tmp = adapter.with_name(f".{adapter.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    with safe_open(str(tmp / ADAPTER_WEIGHTS), "pt") as f:
        keys = list(f.keys())
        saved = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in keys)
    problems = adapter_problems(keys, cfg, base.config.text_config.num_hidden_layers)
    if saved != expected:
        problems.append(f"{saved} adapter parameters where rank {cfg.r} on the targets makes {expected}")
    # The saved folder, loaded afresh onto the base, must write what the merged model writes.
    import peft

    probe = probe or _greedy_probe
    merged = model.merge_and_unload()
    reloaded = peft.PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(init, local_files_only=True), str(tmp))
    if probe(reloaded) != probe(merged):
        problems.append("the saved adapter, loaded onto the base, writes other greedy tokens than the "
                        "merged model on the probe")
    if problems:
        raise RuntimeError(f"LoRA export refused ({tmp}): " + "; ".join(problems))
    (tmp / MANIFEST).write_text(json.dumps({
        "base_model": str(init.resolve()), "base_sha256": base_hash(init), "r": cfg.r, "alpha": cfg.alpha,
        "target_modules": list(cfg.target_modules), "adapter_params": saved,
        "greedy_probe_matches_merged": True}, indent=1) + "\n")
    shutil.rmtree(adapter, ignore_errors=True)
    tmp.rename(adapter)
    return merged


def _greedy_probe(model: Any, tokens: int = 12) -> list[int]:
    """Greedy token ids the model writes after a fixed text prompt."""
    import torch

    model.eval()
    prompt = torch.arange(3, 19).unsqueeze(0)  # token ids every tokenizer of ours has
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens,
                             do_sample=False)
    return out[0, prompt.shape[1]:].tolist()
