"""vLLM through our stack vs raw vLLM, on vLLM's CPU build (the vLLM tier's venv) or on CUDA.

Three ratios, one run, one engine:
- `engine_overhead` = 1 − `VLLMEngine.generate` tokens/s ÷ raw `vllm.LLM.generate` tokens/s on the
  same multimodal solve prompts and sampling parameters (target ≤ 0.10);
- `tree_overhead` = 1 − MCTS search tokens/s ÷ raw `LLM.generate` of about as many tokens from one
  flat batch of the same problems' prompts (target ≤ 0.25): what tree bookkeeping, request batching
  and step-sized generations cost against one saturated batch;
- `vllm_over_hf_speedup` = `VLLMEngine` tokens/s ÷ `HFEngine` tokens/s on the same requests, so a
  user knows which CPU engine to pick.
The measurements are bench/gpu_vllm.py's (a) and (b) (that script is the CUDA run of bench/gpu_run.sh);
this one sizes them for a CPU, picks the device, and adds the HF comparison.

Model: `small` (default: a random-weight Qwen2-VL of hidden 256, 4 layers, head_dim 64; large enough
that the forward passes, not per-step host work, set the pace), `tiny` (the test model), or a local
HF folder.

    make setup-vllm
    .venv-vllm/bin/python bench/tree_overhead.py --quick --json bench/results/tree_overhead_quick.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _results import write_results
from gpu_vllm import PIXELS, Plan, engine_overhead, flat_requests, make_plan, raw_llm, tree_overhead

from mmc_ray.config import EngineConfig, TinyModelConfig, VLLMConfig

TARGET_ENGINE_OVERHEAD = 0.10
SMALL = TinyModelConfig(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2,
                        vision_embed_dim=64, vision_heads=2)


def cpu_plan(quick: bool) -> Plan:
    """gpu_vllm's plan, sized for a CPU: fewer prompts and trees, shorter steps and rollouts. Enough
    trees that their requests fill vLLM's CPU batch (`max_num_seqs` 256), in batches small enough that
    a tree never waits for a call's slowest rollout."""
    plan = make_plan(quick)
    search = dataclasses.replace(plan.search, step_max_tokens=32, rollout_max_tokens=96, max_active_trees=256,
                                 requests_per_call=32)
    return dataclasses.replace(plan, prompts=32 if quick else 96, max_tokens=64 if quick else 128,
                               search_problems=48 if quick else 96, search=search, batches_in_flight=8)


def build_model(spec: str, tmp: Path) -> Path:
    from mmc_ray.models.tiny import build_tiny_vlm

    if spec in ("tiny", "small"):
        return build_tiny_vlm(TinyModelConfig() if spec == "tiny" else SMALL, tmp / f"{spec}-vlm", **PIXELS)
    return Path(spec)


def hf_vs_vllm(vllm_engine: Any, model_dir: Path, device: str, plan: Plan) -> dict[str, Any]:
    from mmc_ray.engines.hf import HFEngine

    hf = HFEngine.from_path(model_dir, device=device, dtype="float32", max_batch_size=64, **PIXELS)
    requests = flat_requests(plan)
    hf.generate(requests[:2])  # first-call costs out of the figures
    sides: dict[str, dict[str, float]] = {}
    for name, engine in (("hf", hf), ("vllm", vllm_engine)):
        start = time.perf_counter()
        results = engine.generate(requests)
        seconds = time.perf_counter() - start
        tokens = sum(c.completion_tokens for r in results for c in r.completions)
        sides[name] = {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": tokens / seconds}
    speedup = sides["vllm"]["tokens_per_s"] / sides["hf"]["tokens_per_s"]
    print(f"(c) {'engine':<8} {'tokens/s':>10} {'tokens':>8} {'s':>7}")
    for name, s in sides.items():
        print(f"    {name:<8} {s['tokens_per_s']:>10,.0f} {s['tokens']:>8} {s['seconds']:>7.1f}")
    print(f"    vLLM ÷ HF = {speedup:.2f}x on {len(requests)} requests x n={plan.samples}", flush=True)
    return {**sides, "speedup": round(speedup, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the same comparison, smaller (~3 min, 2 cores)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--model", default="small", help="small (default), tiny, or a local HF folder")
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="CPU only: vLLM's KV cache")
    args = parser.parse_args()
    try:
        import vllm
    except ImportError:
        print("tree_overhead: needs vLLM: `make setup-vllm`, then run it with .venv-vllm/bin/python",
              file=sys.stderr)
        return 2
    import torch

    from mmc_ray.engines.vllm import VLLMEngine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = cpu_plan(args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args.model, Path(tmp))
        start = time.perf_counter()
        cfg = EngineConfig(kind="vllm", model_path=str(model_dir), device=device, dtype="float32",
                           vllm=VLLMConfig(cpu_kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=0.5,
                                           max_model_len=4096, max_images_per_prompt=1), **PIXELS)
        engine = VLLMEngine.from_config(cfg, enforce_eager=True)
        raw = raw_llm(vllm, cfg, enforce_eager=True)  # the raw side: plain vllm.LLM, same arguments
        started = time.perf_counter() - start
        print(f"engine up in {started:.0f} s: vLLM {vllm.__version__} on {device}, model {args.model}",
              flush=True)
        try:
            engine.generate(flat_requests(dataclasses.replace(plan, prompts=4, max_tokens=8)))  # warm-up
            results = {"engine": engine_overhead(engine, raw, vllm, plan),
                       "tree": tree_overhead(engine, raw, vllm, plan),
                       "hf_vs_vllm": hf_vs_vllm(engine, model_dir, device, plan)}
        finally:
            engine.close()
    results.update(device=device, vllm=vllm.__version__, model=args.model, engine_start_s=round(started, 1),
                   plan=dataclasses.asdict(plan),
                   engine_overhead=results["engine"]["overhead"], tree_overhead=results["tree"]["overhead"],
                   vllm_over_hf_speedup=results["hf_vs_vllm"]["speedup"],
                   targets={"engine_overhead": TARGET_ENGINE_OVERHEAD,
                            "tree_overhead": results["tree"]["target"]})
    print(f"headline: engine overhead {results['engine_overhead']:.1%} "
          f"(target ≤{TARGET_ENGINE_OVERHEAD:.0%}); "
          f"tree overhead {results['tree_overhead']:.1%} (target ≤{results['tree']['target']:.0%}); "
          f"vLLM {results['vllm_over_hf_speedup']:.2f}x HF")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
