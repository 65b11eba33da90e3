"""Load a Qwen2-VL-family model from a local Hugging Face folder, and turn prompts + images into
model inputs without torchvision.

The same code loads the tiny offline model and a real checkpoint (e.g. Qwen2-VL-2B-Instruct in a
directory). Transformers' `Qwen2VLProcessor` would pull torchvision in; what it adds on top of the
tokenizer and the PIL image processor is expanding each image placeholder to the image's number of
visual tokens, which `LoadedVLM.encode` does.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmc_ray.errors import MissingInput, UserError

IMAGE_PLACEHOLDER = "<|image_pad|>"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 on GPU; fp32 on CPU where bf16 matmuls are slow and numerically noisier.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def decode_image(data: bytes) -> Image.Image:
    """PNG/JPEG bytes → RGB image; a clear ValueError when the bytes are not an image or fail its
    checks (`verify`: a PNG's chunk CRCs, which catch damaged pixel data that would still decode)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as e:
        raise ValueError(f"image bytes could not be decoded: {e}") from None


@dataclass(frozen=True)
class VisionInputs:
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor


@dataclass
class LoadedVLM:
    """A model with its tokenizer and image processor, and the few facts needed to feed it."""

    model: Any
    tokenizer: Any
    image_processor: Any
    device: torch.device
    image_token_id: int
    merge_size: int
    wants_mm_token_type_ids: bool

    def chat_prompt(self, messages: Sequence[dict[str, Any]], assistant_prefix: str = "") -> str:
        """Messages rendered with the model's chat template, ready for the assistant to continue."""
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                  tokenize=False)
        return text + assistant_prefix

    def preprocess(self, images: Sequence[Image.Image]) -> VisionInputs | None:
        """Pixel patches and patch grids of one prompt's images (None when it has none)."""
        if not images:
            return None
        vision = self.image_processor(images=list(images), return_tensors="pt")
        return VisionInputs(vision["pixel_values"], vision["image_grid_thw"])

    def expand_images(self, prompt: str, vision: VisionInputs | None) -> str:
        """Each image placeholder repeated as many times as its image has visual tokens."""
        grids = [] if vision is None else [int(g.prod()) // self.merge_size**2 for g in vision.grid_thw]
        pieces = prompt.split(IMAGE_PLACEHOLDER)
        if len(pieces) - 1 != len(grids):
            raise ValueError(f"prompt has {len(pieces) - 1} image placeholders but {len(grids)} images")
        return pieces[0] + "".join(IMAGE_PLACEHOLDER * n + piece
                                   for n, piece in zip(grids, pieces[1:], strict=True))

    def encode(self, prompts: Sequence[str],
               vision: Sequence[VisionInputs | None]) -> dict[str, torch.Tensor]:
        """Tokenise a batch (left-padded for generation). `vision[i]` holds prompt i's images, one
        per image placeholder in order; the same `VisionInputs` may serve several prompts."""
        texts = [self.expand_images(prompt, inputs) for prompt, inputs in zip(prompts, vision, strict=True)]
        tokens = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                                add_special_tokens=False)
        batch: dict[str, torch.Tensor] = {"input_ids": tokens["input_ids"],
                                          "attention_mask": tokens["attention_mask"]}
        present = [v for v in vision if v is not None]
        if present:
            batch["pixel_values"] = torch.cat([v.pixel_values for v in present])
            batch["image_grid_thw"] = torch.cat([v.grid_thw for v in present])
        if self.wants_mm_token_type_ids:
            batch["mm_token_type_ids"] = (tokens["input_ids"] == self.image_token_id).long()
        return {k: v.to(self.device) for k, v in batch.items()}


def load_vlm(path: str | Path, device: str = "auto", dtype: str = "auto",
             min_pixels: int | None = None, max_pixels: int | None = None) -> LoadedVLM:
    """Load model, tokenizer and image processor from a local folder (no hub access)."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise MissingInput(
            f"no model at {path} (config.json missing). Build the tiny offline model with "
            f"`mmc-ray model build-tiny --out {path}` or point model_path at a local HF checkpoint."
        )
    torch_device = resolve_device(device)
    size_override = {}
    if min_pixels is not None and max_pixels is not None:
        size_override["size"] = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True, **size_override)
    model = AutoModelForImageTextToText.from_pretrained(
        path, local_files_only=True, dtype=resolve_dtype(dtype, torch_device)
    ).to(torch_device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedVLM(
        model=model,
        tokenizer=tokenizer,
        image_processor=image_processor,
        device=torch_device,
        image_token_id=model.config.image_token_id,
        merge_size=image_processor.merge_size,
        wants_mm_token_type_ids="mm_token_type_ids" in inspect.signature(model.forward).parameters,
    )
