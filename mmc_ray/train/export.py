"""A fit's result as a Hugging Face folder: the weights gathered from a DeepSpeed checkpoint (any ZeRO
stage), with the tokenizer and the image processor under the fit's pixel budget, written atomically."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

from mmc_ray.config import TrainConfig
from mmc_ray.train.checkpoints import DS_TAG

log = logging.getLogger(__name__)


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
        if tcfg.lora.enabled:
            from mmc_ray.store.layout import adapter_dir
            from mmc_ray.train.lora import export_lora

            adapter = adapter_dir(out.parent)
            merged = export_lora(state, tcfg, adapter)
            return save_model_folder(merged, tcfg, out) if tcfg.lora.merged else adapter
        return save_hf(state, tcfg, out)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def save_hf(state: dict[str, Any], tcfg: TrainConfig, out: Path) -> Path:
    """`state` (a full model state dict) as a Hugging Face folder of `tcfg.init_model`'s model, with
    its tokenizer and the image processor under the fit's pixel budget, written atomically."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tcfg.init_model, local_files_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # tied lm_head may be absent
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return save_model_folder(model, tcfg, out)


def save_model_folder(model: Any, tcfg: TrainConfig, out: Path) -> Path:
    """`model` with `tcfg.init_model`'s tokenizer and an image processor under the fit's pixel
    budget, as a Hugging Face folder written atomically."""
    import shutil

    from transformers import AutoImageProcessor, AutoTokenizer

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
