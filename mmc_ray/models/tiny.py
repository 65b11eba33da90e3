"""A tiny random-weight Qwen2-VL, built offline and saved as a normal Hugging Face folder.

Every later stage loads it with `load_vlm(path)`, the same code that loads a real
Qwen2-VL-2B-Instruct checkpoint from a local directory, so tests and the demo exercise the real path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmc_ray.config import TinyModelConfig

# Qwen2-VL's special tokens, so prompts and chat templates are the same as with a real checkpoint.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The structure of Qwen2-VL's template (without its default system prompt): image parts become
# <|vision_start|><|image_pad|><|vision_end|>, which the processor expands per image.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _training_corpus(n_problems: int = 200) -> list[str]:
    """Text like what the model will read and write: prompts, questions and reference solutions of
    generated problems (offline, deterministic)."""
    from mmc_ray.tasks.prompts import SOLVE_INSTRUCTION
    from mmc_ray.tasks.synthetic import generate_problems

    corpus = [SOLVE_INSTRUCTION]
    for problem in generate_problems(n_problems, seed=12345, difficulties=(1, 2, 3, 4, 5)):
        corpus += [problem.question, problem.reference_solution]
    return corpus


def build_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer with Qwen's special tokens, trained offline on synthetic task
    text so prompts compress like a real tokenizer's (~4 characters a token). Any text
    round-trips exactly; `vocab_size` 256 gives plain byte tokens."""
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if vocab_size > len(alphabet):
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                      show_progress=False, special_tokens=[])
        backend.train_from_iterator(_training_corpus(), trainer=trainer)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_vlm(cfg: TinyModelConfig, out_dir: str | Path, min_pixels: int = 56 * 56,
                   max_pixels: int = 112 * 112) -> Path:
    """Build a random-weight Qwen2-VL with `cfg`'s sizes and save model, tokenizer and image
    processor to `out_dir` (written to a temporary folder first, so a crash leaves no half model)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(cfg.vocab_size)
    token_id = tokenizer.convert_tokens_to_ids
    head_dim = cfg.hidden_size // cfg.num_heads
    half = head_dim // 2
    # mrope splits each head's rotary half into temporal/height/width sections.
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    model_config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "max_position_embeddings": cfg.max_position_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": mrope_section},
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": cfg.vision_depth,
            "embed_dim": cfg.vision_embed_dim,
            "hidden_size": cfg.hidden_size,
            "num_heads": cfg.vision_heads,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2VLForConditionalGeneration(model_config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in (model, tokenizer, image_processor):
        part.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
