"""Training throughput: packed sequences vs padded batches on the same critic examples.

Forward + backward + optimizer step of the tiny random-weight Qwen2-VL on CPU, same examples and
the same token budget per step. Padded batches are taken in dataset order (the usual baseline) and,
for reference, length-bucketed under the budget (`token_budget_batches`).

Then the same through the real trainer (Ray Train, 2 CPU workers, DeepSpeed over gloo, the dataset
read by Ray Data): tokens/s packed vs length-bucketed padding under ZeRO-2, and each worker's peak
memory (max RSS) under ZeRO-2 vs ZeRO-3.

    .venv/bin/python bench/train_packing.py --quick --json bench/results/train_packing_quick.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))

import torch
from _results import write_results

from mmc_ray.config import Config, SearchConfig, SimulatorConfig, TinyModelConfig, TrainConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.models.loading import load_vlm
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.stages.annotate import annotate_to_dir
from mmc_ray.stages.dataset_card import SPLITS
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.train.collate import collate_packed, collate_padded
from mmc_ray.train.examples import ExampleBuilder
from mmc_ray.train.packed_attention import use_packed_attention
from mmc_ray.train.packing import plan_packs, token_budget_batches
from mmc_ray.workers.dispatch import LocalDispatcher


def critique_rows(tmp: Path, n_problems: int) -> list[dict]:
    import pyarrow.parquet as pq

    search_to_dir(list(generate_problems(n_problems, seed=17, difficulties=(1, 2, 3, 4, 5))),
                  LocalDispatcher(SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.25))),
                  SearchConfig(num_simulations=6, rollouts_per_node=2), tmp / "trees", progress=False)
    annotate_to_dir(tmp / "trees", tmp / "ds", Config(), local=True, progress=False)
    shards = [p for s in SPLITS for p in shard_paths(tmp / "ds" / "data", s)]
    return [r for p in shards for r in pq.read_table(p).to_pylist()]


def run(name: str, vlm, examples, groups, make_batch, steps: int) -> dict:
    model = vlm.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    groups = groups[:steps]
    model(**make_batch(groups[0])).loss.backward()  # untimed warm-up of this mode's kernels
    optimizer.zero_grad(set_to_none=True)
    tokens = padded_positions = 0
    start = time.perf_counter()
    for group in groups:
        batch = make_batch(group)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(len(examples[i]) for i in group)
        padded_positions += batch["input_ids"].numel()
    seconds = time.perf_counter() - start
    result = {"mode": name, "steps": len(groups), "tokens": tokens, "computed_positions": padded_positions,
              "padding_share": round(1 - tokens / padded_positions, 3), "seconds": round(seconds, 2),
              "tokens_per_s": round(tokens / seconds, 1)}
    print(f"{name:<18} {result['steps']:>6} {tokens:>8} {padded_positions:>9} "
          f"{result['padding_share']:>8.1%} {seconds:>8.2f} {result['tokens_per_s']:>10.1f}", flush=True)
    return result


def trainer_runs(dataset: Path, model_dir: Path, out: Path, steps: int) -> dict:
    """2-worker fits of the same data: packed vs padded (ZeRO-2), and ZeRO-2 vs ZeRO-3 memory."""
    from mmc_ray.train.trainer import train

    print(f"\n2-worker trainer, {steps} steps each")
    print(f"{'run':<22} {'tokens/s/worker':>16} {'samples/s':>10} {'peak MB/worker':>15} {'seconds':>8}")
    runs = {}
    # An unreported first fit: the first in a process pays one-off costs (Ray Data and Train start-up,
    # kernel warm-up) that would otherwise count against whichever mode went first.
    for name, changes in (("warm-up", {}), ("packed, ZeRO-2", {}), ("padded, ZeRO-2", {"pack": False}),
                          ("packed, ZeRO-3", {"zero_stage": 3})):
        fit_steps = 8 if name == "warm-up" else steps
        tcfg = TrainConfig(init_model=str(model_dir), num_workers=2, cpus_per_worker=0.5, max_steps=fit_steps,
                           checkpoint_every=fit_steps, tokens_per_step=2048, wandb_project="", **changes)
        summary = train(dataclasses.replace(Config(), train=tcfg), dataset, out / name.replace(", ", "-"))
        m = summary.metrics
        if name == "warm-up":
            continue
        runs[name] = {"tokens_per_s": round(m["tokens_per_s"], 1),
                      "samples_per_s": round(m["samples_per_s"], 2),
                      "peak_memory_mb": round(m["peak_memory_mb"], 1), "seconds": round(summary.seconds, 1)}
        print(f"{name:<22} {m['tokens_per_s']:>16.1f} {m['samples_per_s']:>10.2f} "
              f"{m['peak_memory_mb']:>15.1f} {summary.seconds:>8.1f}", flush=True)
    return {
        "runs": runs,
        "speedup": round(runs["packed, ZeRO-2"]["tokens_per_s"] / runs["padded, ZeRO-2"]["tokens_per_s"], 2),
        "zero3_vs_zero2_peak_memory": round(
            runs["packed, ZeRO-3"]["peak_memory_mb"] / runs["packed, ZeRO-2"]["peak_memory_mb"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-trainer", action="store_true", help="skip the 2-worker Ray Train runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    budget = 2048
    batch_size = 8
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = critique_rows(tmp, 48 if args.quick else 160)
        model_dir = build_tiny_vlm(TinyModelConfig(), tmp / "tiny-vlm")
        vlm = load_vlm(model_dir, device="cpu", dtype="float32", min_pixels=56 * 56, max_pixels=112 * 112)
        use_packed_attention(vlm.model)
        examples = ExampleBuilder(vlm, max_seq_len=budget).build_all(rows, "critic")
        lengths = [len(ex) for ex in examples]
        print(f"{len(examples)} critic examples, {min(lengths)}-{max(lengths)} tokens "
              f"(mean {sum(lengths) / len(lengths):.0f}); token budget per step {budget}")
        print(f"{'mode':<18} {'steps':>6} {'tokens':>8} {'positions':>9} {'padding':>8} {'seconds':>8} "
              f"{'tokens/s':>10}")
        pad, image = vlm.tokenizer.pad_token_id, vlm.image_token_id
        in_order = [list(range(i, min(i + batch_size, len(examples))))
                    for i in range(0, len(examples), batch_size)]
        steps = 12 if args.quick else 40
        results = {
            "padded": run("padded (in order)", vlm, examples, in_order,
                          lambda g: collate_padded([examples[i] for i in g], pad, image), steps),
            "bucketed": run("padded (bucketed)", vlm, examples, token_budget_batches(lengths, budget),
                            lambda g: collate_padded([examples[i] for i in g], pad, image), steps),
            "packed": run("packed", vlm, examples, plan_packs(lengths, budget),
                          lambda g: collate_packed([examples[i] for i in g], vlm.model, image), steps),
        }
        if not args.no_trainer:
            results["trainer"] = trainer_runs(tmp / "ds", model_dir, tmp / "fits", 12 if args.quick else 40)
    results["speedup"] = round(results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"], 2)
    results["speedup_vs_bucketed"] = round(
        results["packed"]["tokens_per_s"] / results["bucketed"]["tokens_per_s"], 2)
    print(f"headline: packed is {results['speedup']:.2f}x padded-in-order tokens/s "
          f"({results['speedup_vs_bucketed']:.2f}x length-bucketed padding); padding share in order "
          f"{results['padded']['padding_share']:.0%}, so the most packing can give is about "
          f"{1 / (1 - results['padded']['padding_share']):.2f}x")
    if "trainer" in results:
        t = results["trainer"]
        print(f"trainer: packed {t['speedup']:.2f}x padded tokens/s; ZeRO-3 peak memory "
              f"{t['zero3_vs_zero2_peak_memory']:.2f}x ZeRO-2's")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
