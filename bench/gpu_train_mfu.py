"""Critic SFT on CUDA: tokens/s and MFU of a 2B-class random-weight Qwen2-VL (issue #10; target ≥45%).

Our trainer (Ray Train, DeepSpeed ZeRO-2, bf16 on GPU) fits a random-weight model with Qwen2-VL-2B's
architecture on a synthetic MMC dataset (simulated actor → MCTS → rule annotation, as in
bench/critic_fidelity.py). Figures: tokens/s per worker and MFU as the trainer logs them
(cumulative from the first step, `train.peak_tflops` per worker), the same over the steps after a
warm-up, an MFU that charges the vision tower per image patch instead of per token, and peak GPU
memory.

The model. `build_tiny_vlm` cannot build Qwen2-VL-2B itself: its tokenizer (byte-level BPE trained
on synthetic task text) tops out at 728 tokens whatever vocab_size asks, and its vision MLP ratio is
fixed at 2 (Qwen2-VL: 4). So this script builds the tiny model for its tokenizer, image processor
and token ids, and saves next to them a model with Qwen2-VL-2B's sizes: hidden 1536, 28 layers, 12
heads (2 KV), MLP 8960, vocabulary padded to 151,936 with tied embeddings (the logits and loss cost
what the real model's do; token ids past the tokenizer's are never fed), vision depth 32, width
1280, 16 heads, MLP ratio 4. 2.21B parameters, as the real checkpoint. `--model PATH` trains a
local checkpoint instead.

What is run. The trainer's own fit (`trainer.fit`: the same Ray Data input, worker loop, example
building, packing, DeepSpeed config and metrics) with `BenchHooks`, the trainer's hooks: each step's
end time and tokens are kept, the micro-batches' image patches counted, and the checkpoint upload
becomes a metrics-only report. A ZeRO-2
checkpoint of a 2B model is ~31 GB (bf16 weights, fp32 master copy, two Adam moments), written to a
temporary folder and copied to the run folder: ~62 GB on a device machine's 64 GiB disk, and minutes.

Memory. The trainer has no activation checkpointing, so the token budget per micro-batch is what
the GPU holds beside ZeRO-2's ~20 bytes per parameter: ~6 MB per token for this architecture (3.1 MB
of saved decoder activations, 0.6 MB of fp32 logits and ~1.2 MB transient in the loss, measured on
CPU with a 1-2-layer slice; plus the vision tower at the preset's pixel budget). `auto` picks
4096 tokens on an 80 GB H100 and 12288 on a 141 GB H200; an out-of-memory first try is retried once
at half the budget.

    python bench/gpu_train_mfu.py --quick --json "$OUT/gpu_train_mfu.json"     # on a CUDA machine
    .venv/bin/python bench/gpu_train_mfu.py --dry-run                           # the plan, on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))

from _results import missing_for_gpu_run, write_results

from mmc_ray.config import Config, TinyModelConfig, TrainConfig
from mmc_ray.config.sections import LoraConfig
from mmc_ray.train.trainer import TrainHooks

# Qwen2-VL-2B-Instruct's architecture (its config.json); what TinyModelConfig cannot say is beside it.
QWEN2_VL_2B = TinyModelConfig(hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                              num_kv_heads=2, vision_depth=32, vision_embed_dim=1280, vision_heads=16,
                              max_position_embeddings=32768)
QWEN2_VL_2B_VOCAB = 151_936
QWEN2_VL_2B_VISION_MLP_RATIO = 4
QWEN2_VL_2B_MROPE_SECTION = [16, 24, 24]
TINY_VISION_MLP_RATIO = 2  # what build_tiny_vlm writes

PEAK_TFLOPS = 989.0  # H100 SXM dense bf16; the H200 is the same compute die: also 989
TARGET_MFU = 0.45
# The trainer's pixel budget in the 1-GPU 2B preset (configs/qwen2vl-2b-1gpu.yaml): 224² to 448².
MIN_PIXELS, MAX_PIXELS = 50_176, 200_704
STATE_BYTES_PER_PARAM = 4 + 16  # ZeRO-2 per GPU: bf16 weights + bf16 grads, + fp32 master/m/v/grad ÷ workers
ACTIVATION_BYTES_PER_TOKEN = 6e6  # see the module docstring
MEMORY_HEADROOM = 0.85  # share of the GPU the estimate may fill (allocator fragmentation, CUDA context)


def param_parts(model: Any) -> dict[str, int]:
    """Parameters of a Qwen2-VL by part, as `freeze_parts` names them (tied weights counted once)."""
    parts = {"language": 0, "vision": 0, "projector": 0}
    for name, param in model.named_parameters():
        is_projector = ".visual.merger." in f".{name}"
        is_vision = ".visual." in f".{name}" and not is_projector
        parts["projector" if is_projector else "vision" if is_vision else "language"] += param.numel()
    return parts


def scaled_config(base: Any, sizes: TinyModelConfig, vocab_size: int, vision_mlp_ratio: int,
                  tie_embeddings: bool, mrope_section: list[int]) -> Any:
    """`base` (a `Qwen2VLConfig`: token ids, rope type, template facts) with `sizes`' dimensions."""
    from transformers import Qwen2VLConfig

    d = base.to_dict()
    text = d["text_config"]
    text.update(vocab_size=vocab_size, hidden_size=sizes.hidden_size,
                intermediate_size=sizes.intermediate_size, num_hidden_layers=sizes.num_layers,
                num_attention_heads=sizes.num_heads, num_key_value_heads=sizes.num_kv_heads,
                max_position_embeddings=sizes.max_position_embeddings)
    text.pop("layer_types", None)  # one entry per layer: derived again from num_hidden_layers
    text["rope_parameters"] = {**(text.get("rope_parameters") or {}), "mrope_section": mrope_section}
    d["vision_config"].update(depth=sizes.vision_depth, embed_dim=sizes.vision_embed_dim,
                              num_heads=sizes.vision_heads, mlp_ratio=vision_mlp_ratio,
                              hidden_size=sizes.hidden_size)
    d["tie_word_embeddings"] = tie_embeddings
    return Qwen2VLConfig.from_dict(d)


def qwen2vl_2b_config(base: Any) -> Any:
    return scaled_config(base, QWEN2_VL_2B, QWEN2_VL_2B_VOCAB, QWEN2_VL_2B_VISION_MLP_RATIO, True,
                         QWEN2_VL_2B_MROPE_SECTION)


def count_params(config: Any) -> dict[str, int]:
    """Parameter counts of the model `config` describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    parts = param_parts(model)
    return {**parts, "total": sum(parts.values())}


def build_2b_vlm(out_dir: Path, device: str = "cuda", vocab_size: int | None = QWEN2_VL_2B_VOCAB) -> Path:
    """A random-weight model with Qwen2-VL-2B's architecture in `out_dir` (bf16 weights, the tiny
    model's tokenizer and image processor). `vocab_size=None` cuts the vocabulary to the tokenizer's
    (for engines that detokenize every sampled id); only the embeddings shrink."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from mmc_ray.models.tiny import build_tiny_vlm

    tiny = build_tiny_vlm(TinyModelConfig(), out_dir.with_name(f"{out_dir.name}-tiny"),
                          min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    vocab_size = vocab_size or len(AutoTokenizer.from_pretrained(tiny, local_files_only=True))
    config = scaled_config(Qwen2VLConfig.from_pretrained(tiny), QWEN2_VL_2B, vocab_size,
                           QWEN2_VL_2B_VISION_MLP_RATIO, True, QWEN2_VL_2B_MROPE_SECTION)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(tiny, out_dir, ignore=shutil.ignore_patterns("*.safetensors*", "config.json",
                                                                 "generation_config.json"))
    model.save_pretrained(out_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    shutil.rmtree(tiny)
    return out_dir


def auto_tokens_per_step(gpu_bytes: float, n_params: int, workers: int, max_seq_len: int) -> int:
    """The largest multiple of `max_seq_len` whose activations fit beside ZeRO-2's states."""
    states = n_params * (4 + (STATE_BYTES_PER_PARAM - 4) / workers)
    fits = (MEMORY_HEADROOM * gpu_bytes - states) / ACTIVATION_BYTES_PER_TOKEN
    return max(max_seq_len, int(fits // max_seq_len) * max_seq_len)


def flops_per_token(parts: dict[str, int], patches_per_token: float, merge: int = 2) -> dict[str, float]:
    """Training FLOPs per token (6N: forward 2N + backward 4N, every parameter trainable) the
    trainer's way, every parameter per token, and charging the vision tower per image patch (its
    merger per merged patch) instead."""
    total = parts["language"] + parts["vision"] + parts["projector"]
    vlm = parts["language"] + patches_per_token * (parts["vision"] + parts["projector"] / merge**2)
    return {"trainer": 6.0 * total, "vlm": 6.0 * vlm}


class BenchHooks(TrainHooks):
    """The trainer's own fit, observed: each step's end time and tokens, the micro-batches' image
    patches, and a metrics-only report instead of the checkpoint upload (see the module docstring)."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.step_tokens: list[int] = []
        self.seen = {"tokens": 0, "patches": 0}

    def on_batch(self, batch: dict[str, Any], tokens: int) -> None:
        self.seen["tokens"] += tokens
        pixels = batch.get("pixel_values")
        self.seen["patches"] += 0 if pixels is None else int(pixels.shape[0])

    def on_step(self, step: int, tokens: int, values: dict[str, float]) -> None:
        self.step_ends.append(time.perf_counter())  # after the step's loss all-reduce: the GPU is done
        self.step_tokens.append(tokens)

    def checkpoint(self, engine: Any, step: int, curve: list[float], metrics: dict[str, Any], rank: int,
                   world: int) -> None:
        import json

        import ray.train
        import torch

        cuda = torch.cuda.is_available()
        values = {
            **metrics,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if cuda else 0.0,
            "gpu_name": torch.cuda.get_device_name() if cuda else "cpu",
            "gpu_memory_mb": torch.cuda.get_device_properties(0).total_memory / 2**20 if cuda else 0.0,
            "step_end_s": [t - self.step_ends[0] for t in self.step_ends],
            "step_tokens": list(self.step_tokens),
            "stream_tokens": self.seen["tokens"], "stream_patches": self.seen["patches"],
            "param_parts": param_parts(engine.module),
            "merge_size": int(engine.module.config.vision_config.spatial_merge_size),
            "losses": list(curve),
        }
        # Ray Train keeps only the metrics reported with a checkpoint: rank 0 attaches a tiny one.
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "metrics.json").write_text(json.dumps(values))
            checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report(values, checkpoint=checkpoint)


def fit(tcfg: TrainConfig, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """One fit of the trainer with `BenchHooks`; rank 0's metrics."""
    from mmc_ray.ray_runtime import init_ray
    from mmc_ray.store.layout import split_shards
    from mmc_ray.train import trainer

    init_ray()
    module = sys.modules[BenchHooks.__module__]
    if module.__name__ != "__main__":  # imported (tests, other benches): ship it by value like __main__
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    result = trainer.fit(tcfg, out_dir, split_shards(data_dir, "train"), hooks=BenchHooks())
    return dict(result.metrics or {})


def steady(metrics: dict[str, Any], warmup: int) -> dict[str, float]:
    """Tokens/s over the steps after the first `warmup` (at least one: its end is the clock's start)."""
    ends, tokens = metrics["step_end_s"], metrics["step_tokens"]
    warmup = min(max(warmup, 1), len(ends) - 1)
    seconds = ends[-1] - ends[warmup - 1]
    return {"steps": len(ends) - warmup, "tokens": sum(tokens[warmup:]), "seconds": seconds,
            "tokens_per_s": sum(tokens[warmup:]) / seconds if seconds > 0 else 0.0}


def dataset_stats(data_dir: Path, model_dir: Path, max_seq_len: int) -> dict[str, float]:
    """Example lengths and image patches per token of the train split, built as the trainer builds
    them (on CPU, with `model_dir`'s tokenizer and image processor at the bench's pixel budget)."""
    import pyarrow.parquet as pq

    from mmc_ray.models.loading import load_vlm
    from mmc_ray.train.examples import ExampleBuilder

    files = sorted((data_dir / "data").glob("train-*.parquet"))
    rows = [r for p in files for r in pq.read_table(p).to_pylist()]
    vlm = load_vlm(model_dir, device="cpu", dtype="float32", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    examples = ExampleBuilder(vlm, max_seq_len).build_all(rows, "critic")
    tokens = sum(len(ex) for ex in examples)
    patches = sum(0 if ex.pixel_values is None else ex.pixel_values.shape[0] for ex in examples)
    return {"examples": len(examples), "tokens": tokens, "mean_tokens": tokens / max(len(examples), 1),
            "patches_per_token": patches / max(tokens, 1)}


def describe_params(parts: dict[str, int]) -> str:
    return (f"{parts['total'] / 1e9:.2f}B parameters ({parts['total']:,}: language "
            f"{parts['language'] / 1e9:.2f}B, vision {parts['vision'] / 1e9:.2f}B, projector "
            f"{parts['projector'] / 1e9:.3f}B)")


def dry_run(args: argparse.Namespace, cfg: Config, tcfg: TrainConfig, steps: int) -> int:
    """The plan on CPU: the 2B config's size (meta device), a small dataset, the trainer hooks."""
    from critic_fidelity import build_dataset
    from transformers import AutoConfig, AutoTokenizer, Qwen2VLConfig

    from mmc_ray.models.tiny import build_tiny_vlm

    tmp_dir = tempfile.TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    # The tiny model: the 2B build's tokenizer and image processor, and the dataset figures below.
    tiny = build_tiny_vlm(TinyModelConfig(), tmp / "tiny", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    if args.model:
        parts = count_params(AutoConfig.from_pretrained(args.model, local_files_only=True))
        print(f"model: {args.model}: {describe_params(parts)}")
    else:
        parts = count_params(qwen2vl_2b_config(Qwen2VLConfig()))
        vocab = len(AutoTokenizer.from_pretrained(tiny, local_files_only=True))
        tiny_way = count_params(scaled_config(Qwen2VLConfig(), QWEN2_VL_2B, vocab, TINY_VISION_MLP_RATIO,
                                              False, QWEN2_VL_2B_MROPE_SECTION))
        print(f"model: 2B-class random-weight Qwen2-VL (Qwen2-VL-2B architecture): {describe_params(parts)}")
        print(f"  (build_tiny_vlm with these sizes: {tiny_way['total'] / 1e9:.2f}B; its tokenizer stops at "
              f"{vocab} tokens and its vision MLP ratio is {TINY_VISION_MLP_RATIO})")
    h100 = auto_tokens_per_step(80 * 2**30, parts["total"], tcfg.num_workers, tcfg.max_seq_len)
    h200 = auto_tokens_per_step(141 * 2**30, parts["total"], tcfg.num_workers, tcfg.max_seq_len)
    budget = args.tokens_per_step or f"auto ({h100} on an 80 GB H100, {h200} on a 141 GB H200)"
    print(f"trainer: {tcfg.num_workers} worker(s), ZeRO-{tcfg.zero_stage} bf16, tokens/step {budget}, "
          f"max_seq_len {tcfg.max_seq_len}, grad_accum {tcfg.grad_accum}, {steps} steps, pixels "
          f"{tcfg.min_pixels}-{tcfg.max_pixels}, peak {tcfg.peak_tflops:g} TFLOP/s per worker")
    from ray import cloudpickle

    print(f"trainer hooks: ok ({BenchHooks.__name__} pickles for the workers: "
          f"{len(cloudpickle.dumps(BenchHooks()))} bytes)")
    n_problems = 24
    with tmp_dir:
        start = time.perf_counter()
        splits = build_dataset(cfg, n_problems, tmp)
        stats = dataset_stats(tmp / "dataset", tiny, tcfg.max_seq_len)
        print(f"dataset: {args.problems} problems on the GPU run; here {n_problems} problems → "
              + ", ".join(f"{s} {len(r)}" for s, r in splits.items())
              + f" examples, {stats['mean_tokens']:.0f} tokens and {stats['patches_per_token']:.2f} "
              f"image patches per token ({time.perf_counter() - start:.1f} s)")
    flops = flops_per_token(parts, stats["patches_per_token"])
    print(f"FLOPs/token: trainer's 6N {flops['trainer'] / 1e9:.1f} G; vision per patch "
          f"{flops['vlm'] / 1e9:.1f} G → on this data the trainer's MFU reads "
          f"{flops['trainer'] / flops['vlm']:.2f}x the VLM-aware one")
    print("dry run: no GPU used")
    return 0


def gpu_run(args: argparse.Namespace, cfg: Config, tcfg: TrainConfig, steps: int) -> dict[str, Any]:
    import torch
    from critic_fidelity import build_dataset
    from transformers import AutoConfig

    props = torch.cuda.get_device_properties(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        splits = build_dataset(cfg, args.problems, tmp)
        print(f"dataset: {args.problems} problems → " + ", ".join(f"{s} {len(r)}" for s, r in splits.items())
              + f" examples ({time.perf_counter() - start:.0f} s)", flush=True)
        start = time.perf_counter()
        model_dir = Path(args.model) if args.model else build_2b_vlm(tmp / "qwen2vl-2b-random")
        parts = count_params(AutoConfig.from_pretrained(model_dir, local_files_only=True))
        print(f"model: {model_dir.name}: {describe_params(parts)} ({time.perf_counter() - start:.0f} s)",
              flush=True)
        tokens_per_step = args.tokens_per_step or auto_tokens_per_step(
            props.total_memory, parts["total"], tcfg.num_workers, tcfg.max_seq_len)
        tcfg = dataclasses.replace(tcfg, init_model=str(model_dir), tokens_per_step=tokens_per_step)
        tries = []
        while True:
            print(f"fit: {tcfg.num_workers} worker(s) on {props.name}, tokens/step {tcfg.tokens_per_step}, "
                  f"max_seq_len {tcfg.max_seq_len}, grad_accum {tcfg.grad_accum}, {steps} steps", flush=True)
            start = time.perf_counter()
            try:
                metrics = fit(tcfg, tmp / "dataset", tmp / f"fit-{len(tries)}")
                break
            except Exception as e:  # Ray Train wraps the worker's error; its text says what it was
                oom = "out of memory" in str(e).lower()
                tries.append({"tokens_per_step": tcfg.tokens_per_step,
                              "error": f"{type(e).__name__}: {e}"[:2000]})
                print(f"fit failed after {time.perf_counter() - start:.0f} s"
                      f"{' (out of memory)' if oom else ''}: {str(e)[-1500:]}", flush=True)
                if not oom or len(tries) > 1 or tcfg.tokens_per_step < 2 * 1024:
                    raise
                half = tcfg.tokens_per_step // 2
                tcfg = dataclasses.replace(tcfg, tokens_per_step=half,
                                           max_seq_len=min(tcfg.max_seq_len, half))
        fit_seconds = time.perf_counter() - start
    return summarize(metrics, tcfg, steps, fit_seconds, tries, parts)


def summarize(m: dict[str, Any], tcfg: TrainConfig, steps: int, fit_seconds: float,
              tries: list[dict[str, Any]], parts: dict[str, int]) -> dict[str, Any]:
    peak = tcfg.peak_tflops * 1e12
    patches_per_token = m["stream_patches"] / max(m["stream_tokens"], 1)
    flops = flops_per_token(m["param_parts"], patches_per_token, m["merge_size"])
    warm = steady(m, max(2, steps // 5))
    results = {
        "device": m["gpu_name"], "gpu_memory_gib": round(m["gpu_memory_mb"] / 1024, 1),
        "model_params": {**m["param_parts"], "total": sum(m["param_parts"].values())},
        "config": {k: v for k, v in dataclasses.asdict(tcfg).items() if k != "init_model"},
        "oom_retries": tries,
        "trainer": {  # as the trainer logs them: cumulative from the first step
            "tokens_per_s_per_worker": round(m["tokens_per_s"], 1), "mfu": round(m.get("mfu", 0.0), 4),
            "samples_per_s": round(m["samples_per_s"], 2), "data_wait_share": round(m["data_wait_share"], 3),
            "model_tflops_per_s": round(m["model_tflops_per_s"], 1), "loss": m["loss"],
            "examples_built": m["examples_built"], "examples_skipped": m["examples_skipped"]},
        "steady": {  # after the warm-up steps
            **{k: round(v, 3) for k, v in warm.items()},
            "mfu": round(flops["trainer"] * warm["tokens_per_s"] / peak, 4),
            "mfu_vlm": round(flops["vlm"] * warm["tokens_per_s"] / peak, 4)},
        "patches_per_token": round(patches_per_token, 3),
        "flops_per_token": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "peak_memory_gib": round(m["peak_memory_mb"] / 1024, 2),
        "peak_reserved_gib": round(m["peak_reserved_mb"] / 1024, 2),
        "fit_seconds": round(fit_seconds, 1), "steps": steps,
        "lora_rank": tcfg.lora.r if tcfg.lora.enabled else 0,
        "target_mfu": TARGET_MFU,
    }
    results["mfu"] = results["steady"]["mfu"]
    results["meets_target"] = results["mfu"] >= TARGET_MFU
    s, t = results["steady"], results["trainer"]
    print(f"\n{results['device']} ({results['gpu_memory_gib']} GiB), {tcfg.num_workers} worker(s), "
          f"{f'LoRA r{tcfg.lora.r}' if tcfg.lora.enabled else 'full fine-tuning'}, "
          f"{tcfg.tokens_per_step} tokens/micro-batch x {tcfg.grad_accum}")
    print(f"{'figure':<34} {'value':>12}")
    for name, value in (
        ("tokens/s per worker (trainer)", f"{t['tokens_per_s_per_worker']:,.0f}"),
        ("MFU (trainer, from step 1)", f"{t['mfu']:.1%}"),
        (f"tokens/s per worker (last {s['steps']} steps)", f"{s['tokens_per_s']:,.0f}"),
        ("MFU (last steps, 6N per token)", f"{s['mfu']:.1%}"),
        ("MFU (last steps, vision per patch)", f"{s['mfu_vlm']:.1%}"),
        ("data wait share", f"{t['data_wait_share']:.1%}"),
        ("peak GPU memory (allocated)", f"{results['peak_memory_gib']:.1f} GiB"),
        ("peak GPU memory (reserved)", f"{results['peak_reserved_gib']:.1f} GiB"),
    ):
        print(f"{name:<34} {value:>12}")
    print(f"headline: MFU {results['mfu']:.1%} (target ≥{TARGET_MFU:.0%}: "
          f"{'met' if results['meets_target'] else 'missed'}), {s['tokens_per_s']:,.0f} tokens/s per worker")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (the device-script run)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan on CPU; no GPU needed")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--model", help="a local HF Qwen2-VL folder instead of the random 2B-class model")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers, one GPU each")
    parser.add_argument("--problems", type=int, default=300, help="synthetic problems in the dataset")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 40; quick 24)")
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--tokens-per-step", type=int, help="micro-batch token budget (default: fit the GPU)")
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument("--lora", type=int, default=0, metavar="RANK",
                        help="train a LoRA adapter of this rank on the language model instead of every "
                             "weight (0: full fine-tuning); its MFU still charges 6N a token")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                        help="one GPU's dense bf16 peak (H100 and H200: 989)")
    args = parser.parse_args()
    steps = args.steps or (24 if args.quick else 40)

    from critic_fidelity import dataset_config

    cfg = dataset_config()
    tcfg = TrainConfig(num_workers=args.workers, use_gpu=True, cpus_per_worker=2, zero_stage=2,
                       learning_rate=1e-5, warmup_steps=2, max_steps=steps, grad_accum=args.grad_accum,
                       max_seq_len=args.max_seq_len,
                       tokens_per_step=max(args.tokens_per_step or args.max_seq_len, args.max_seq_len),
                       min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, checkpoint_every=steps,
                       wandb_project="", peak_tflops=args.peak_tflops,
                       lora=LoraConfig(enabled=bool(args.lora), r=args.lora or LoraConfig.r, merged=False))
    # The critic runs what train fine-tunes: one pixel budget for both (the config checks it).
    cfg = dataclasses.replace(cfg, train=tcfg, critic=dataclasses.replace(cfg.critic, min_pixels=MIN_PIXELS,
                                                                          max_pixels=MAX_PIXELS))
    if args.dry_run:
        return dry_run(args, cfg, tcfg, steps)
    why = missing_for_gpu_run(["torch", "ray", "deepspeed"],
                              "on a lent device machine, carry them as wheels: see bench/gpu_run.sh")
    if why:
        print(f"gpu_train_mfu: {why}; `--dry-run` checks the plan on CPU", file=sys.stderr)
        return 2
    try:
        results = gpu_run(args, cfg, tcfg, steps)
    except Exception as e:  # the traceback goes to the log; the JSON says what failed
        traceback.print_exc()
        write_results({"error": f"{type(e).__name__}: {e}"[-4000:]}, args.json)
        return 1
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
