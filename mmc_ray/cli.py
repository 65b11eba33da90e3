"""`mmc-ray` command line: one subcommand per stage, config from YAML plus dotted overrides.

    mmc-ray tasks generate --n 1000 --out problems.parquet
    mmc-ray model build-tiny --out runs/tiny-vlm
    mmc-ray generate --problems problems.parquet --out results.parquet actor.kind=simulated
    mmc-ray search --problems problems.parquet --out trees/ actor.kind=simulated
    mmc-ray annotate --trees trees/ --out mmc-dataset/
    mmc-ray train --task critic --data mmc-dataset/ --out runs/critic
    mmc-ray demo --out runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mmc_ray.config import Config, ConfigError, TasksConfig, load_config

log = logging.getLogger("mmc_ray")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config (default: configs/tiny-cpu.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. generate.temperature=0")


def _csv(kind: type) -> Callable[[str], tuple]:
    return lambda text: tuple(kind(x) for x in text.split(",") if x)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmc-ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    tasks = commands.add_parser("tasks", help="synthetic visual tasks").add_subparsers(
        dest="tasks_command", required=True)
    gen_tasks = tasks.add_parser("generate", help="write N synthetic problems to Parquet")
    gen_tasks.add_argument("--n", type=int, help="number of problems (default: tasks.n)")
    gen_tasks.add_argument("--out", type=Path, required=True)
    gen_tasks.add_argument("--seed", type=int)
    gen_tasks.add_argument("--families", type=_csv(str), help="comma-separated family names")
    gen_tasks.add_argument("--difficulties", type=_csv(int), help="comma-separated, each 1..5")
    _add_config_args(gen_tasks)

    model = commands.add_parser("model", help="models").add_subparsers(dest="model_command", required=True)
    build = model.add_parser("build-tiny", help="build the tiny random-weight Qwen2-VL (offline)")
    build.add_argument("--out", type=Path, required=True)
    _add_config_args(build)

    gen = commands.add_parser("generate", help="run an engine over a problem file and score it")
    gen.add_argument("--problems", type=Path, required=True,
                     help="problems Parquet from `tasks generate`, or a MathVista-style .jsonl/.parquet")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--engine", choices=["hf", "simulated"], help="shortcut for actor.kind")
    _add_config_args(gen)

    search = commands.add_parser("search", help="MCTS over a problem file with policy workers on Ray")
    search.add_argument("--problems", type=Path, required=True)
    search.add_argument("--out", type=Path, required=True, help="folder of trees-NNNNN.parquet shards")
    search.add_argument("--engine", choices=["hf", "simulated"], help="shortcut for actor.kind")
    search.add_argument("--local", action="store_true",
                        help="run the engine in this process instead of Ray workers (debugging)")
    _add_config_args(search)

    annotate = commands.add_parser("annotate", help="mine divergent pairs from trees and critique them")
    annotate.add_argument("--trees", type=Path, required=True, help="folder written by `mmc-ray search`")
    annotate.add_argument("--out", type=Path, required=True, help="dataset folder (data/, drops/, README.md)")
    annotate.add_argument("--method", choices=["rule", "llm"], help="shortcut for annotate.method")
    annotate.add_argument("--local", action="store_true", help="run in this process instead of Ray Data")
    _add_config_args(annotate)

    train = commands.add_parser("train", help="train the critic (or actor SFT) with Ray Train + DeepSpeed")
    train.add_argument("--task", choices=["critic", "actor-sft"], help="shortcut for train.task")
    train.add_argument("--data", type=Path, required=True,
                       help="critic: a dataset folder from `annotate`; actor-sft: a folder of problem files")
    train.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, hf/ export)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    _add_config_args(train)

    demo = commands.add_parser("demo", help="tasks, tiny model, generation, MCTS search, annotation")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    _add_config_args(demo)
    return parser


def _config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    return load_config(args.config, [*args.overrides, *extra])


def cmd_tasks_generate(args: argparse.Namespace) -> None:
    cfg = _config(args).tasks
    cfg = dataclasses.replace(cfg, **{k: v for k in ("n", "seed", "families", "difficulties")
                                      if (v := getattr(args, k)) is not None})
    _write_tasks(cfg, args.out)


def _write_tasks(cfg: TasksConfig, out: Path) -> int:
    from tqdm import tqdm

    from mmc_ray.tasks.generator import generate_problems
    from mmc_ray.tasks.problem import write_problems

    problems = tqdm(generate_problems(cfg.n, seed=cfg.seed, families=cfg.families,
                                      difficulties=cfg.difficulties, image_size=cfg.image_size),
                    total=cfg.n, desc="tasks", unit="problem")
    count = write_problems(problems, out)
    print(f"wrote {count} problems to {out}")
    return count


def cmd_model_build_tiny(args: argparse.Namespace) -> None:
    from mmc_ray.models.tiny import build_tiny_vlm

    cfg = _config(args)
    path = build_tiny_vlm(cfg.tiny_model, args.out, cfg.actor.min_pixels, cfg.actor.max_pixels)
    print(f"built tiny Qwen2-VL at {path}")


def cmd_generate(args: argparse.Namespace) -> None:
    cfg = _config(args, [f"actor.kind={args.engine}"] if args.engine else [])
    summary = _run_generate(cfg, args.problems, args.out)
    _print_summaries([summary])


def _run_generate(cfg: Config, problems_path: Path, out: Path):
    from mmc_ray.engines.factory import build_engine
    from mmc_ray.pipeline.generate import run_generate
    from mmc_ray.tasks.benchmark import load_problem_file

    problems = load_problem_file(problems_path)
    engine = build_engine(cfg.actor)
    return run_generate(problems, engine, cfg.generate, out, batch_size=cfg.actor.max_batch_size)


def cmd_search(args: argparse.Namespace) -> None:
    cfg = _config(args, [f"actor.kind={args.engine}"] if args.engine else [])
    _run_search(cfg, args.problems, args.out, local=args.local)


def _run_search(cfg: Config, problems_path: Path, out: Path, local: bool = False) -> None:
    from mmc_ray.pipeline.search import search_to_dir
    from mmc_ray.tasks.benchmark import load_problem_file

    problems = load_problem_file(problems_path)
    if local:
        from mmc_ray.engines.factory import build_engine
        from mmc_ray.pipeline.dispatch import LocalDispatcher

        summary = search_to_dir(problems, LocalDispatcher(build_engine(cfg.actor)), cfg.search, out)
    else:
        from mmc_ray.pipeline.dispatch import RayDispatcher
        from mmc_ray.ray_runtime import init_ray
        from mmc_ray.workers.group import create_worker_group
        from mmc_ray.workers.role_worker import PolicyWorker

        init_ray()
        group = create_worker_group(PolicyWorker, cfg.actor)
        try:
            summary = search_to_dir(problems, RayDispatcher(group.workers), cfg.search, out)
        finally:
            group.shutdown()
    _print_search_summary(summary, out)


def cmd_annotate(args: argparse.Namespace) -> None:
    cfg = _config(args, [f"annotate.method={args.method}"] if args.method else [])
    _run_annotate(cfg, args.trees, args.out, local=args.local)


def _run_annotate(cfg: Config, trees: Path, out: Path, local: bool = False) -> None:
    from mmc_ray.pipeline.annotate import annotate_to_dir
    from mmc_ray.pipeline.dataset_card import card_stats

    summary = annotate_to_dir(trees, out, cfg, local=local)
    stats = card_stats(out)
    splits = ", ".join(f"{s} {n}" for s, n in stats["split"].items())
    agreement = f"{stats['agreement']:.2%}" if stats["agreement"] is not None else "n/a"
    print(f"annotate: {summary.critiques} new critiques, {summary.drops} new drops, "
          f"{summary.skipped_existing} pairs already done ({summary.seconds:.1f}s)")
    print(f"dataset {out}: {stats['rows']} critiques ({splits}), {stats['drops']} drops; "
          f"agreement with ground truth {agreement}; card: {summary.card}")
    for reason, n in stats["drop_reason"].most_common(5):
        print(f"  dropped {n}: {reason}")


def cmd_train(args: argparse.Namespace) -> None:
    cfg = _config(args, [f"train.task={args.task}"] if args.task else [])
    _run_train(cfg, args.data, args.out, resume=args.resume)


def _run_train(cfg: Config, data: Path, out: Path, resume: bool = False) -> None:
    from mmc_ray.train.trainer import train

    summary = train(cfg, data, out, resume=resume)
    m = summary.metrics
    losses = " -> ".join(f"{h['loss']:.3f}" for h in summary.history)
    print(f"train: {m.get('step')} steps in {summary.seconds:.0f}s; loss {losses}; "
          f"{m.get('tokens_per_s', 0):.0f} tokens/s/worker, data wait {m.get('data_wait_share', 0):.0%}; "
          f"trainable {m.get('trainable_params')}/{m.get('total_params')} params; "
          f"{m.get('examples_skipped')} examples skipped, {m.get('images_resized')} images resized")
    print(f"checkpoint: {summary.checkpoint}\nexported critic: {summary.exported}")


def _print_search_summary(summary, out: Path) -> None:
    import pyarrow.parquet as pq

    from mmc_ray.pipeline.shards import shard_paths

    columns = ["terminal_correct", "terminal_wrong", "root_value"]
    rows = [r for p in shard_paths(out, "trees") for r in pq.read_table(p, columns=columns).to_pylist()]
    divergent = sum(bool(r["terminal_correct"] and r["terminal_wrong"]) for r in rows)
    print(f"search: {summary.trees} trees searched, {summary.resumed} already done, "
          f"{len(summary.skipped)} skipped; {summary.expansions} expansions, {summary.rollouts} rollouts, "
          f"{summary.tokens} tokens in {summary.engine_calls} engine calls "
          f"({summary.expansions_per_s:.1f} expansions/s, {summary.failed_batches} failed batches, "
          f"{summary.worker_restarts} lost with their worker)")
    for problem_id, reason in summary.skipped:
        print(f"  skipped {problem_id}: {reason}")
    if rows:
        mean_value = sum(r["root_value"] for r in rows) / len(rows)
        print(f"trees in {out}: {len(rows)}; with both correct and wrong answers: {divergent}; "
              f"mean root value {mean_value:.3f}")


def _print_summaries(summaries: Sequence) -> None:
    families = sorted({f for s in summaries for f in s.family_samples})
    header = ["engine", "samples", "accuracy", "errors", "seconds", *families]
    rows = [[s.engine, str(s.samples), f"{s.accuracy:.3f}", str(s.errors), f"{s.seconds:.1f}",
             *(f"{s.family_correct.get(f, 0) / s.family_samples[f]:.3f}" if s.family_samples.get(f)
               else "-" for f in families)]
            for s in summaries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    for s in summaries:
        print(f"results ({s.engine}): {s.out_path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from mmc_ray.models.tiny import build_tiny_vlm

    out: Path = args.out
    model_path = out / "tiny-vlm"
    cfg = _config(args, [f"actor.model_path={model_path}"])
    problems = out / "problems.parquet"
    _write_tasks(cfg.tasks, problems)
    if not (model_path / "config.json").exists():
        build_tiny_vlm(cfg.tiny_model, model_path, cfg.actor.min_pixels, cfg.actor.max_pixels)
        print(f"built tiny Qwen2-VL at {model_path}")
    summaries = [
        _run_generate(dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, kind=kind)),
                      problems, out / f"results-{kind}.parquet")
        for kind in ("simulated", "hf")
    ]
    print()
    _print_summaries(summaries)
    print("The simulated actor is a noisy solver of the synthetic tasks (its accuracy follows its "
          "configured error rates);\nthe tiny Qwen2-VL has random weights, so near-zero accuracy is "
          "expected: it shows the real model path runs end to end.\n")
    # MCTS with the simulated actor: the tiny random model would only produce garbage trees.
    _run_search(dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, kind="simulated")),
                problems, out / "trees")
    print()
    _run_annotate(cfg, out / "trees", out / "mmc-dataset")
    print()
    # A short critic run from the tiny model, to show the trainer end to end.
    short = dataclasses.replace(cfg.train, init_model=str(model_path), max_steps=min(cfg.train.max_steps, 12),
                                checkpoint_every=6)
    _run_train(dataclasses.replace(cfg, train=short), out / "mmc-dataset", out / "critic")


COMMANDS = {
    ("tasks", "generate"): cmd_tasks_generate,
    ("model", "build-tiny"): cmd_model_build_tiny,
    ("generate", None): cmd_generate,
    ("search", None): cmd_search,
    ("annotate", None): cmd_annotate,
    ("train", None): cmd_train,
    ("demo", None): cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    sub = getattr(args, f"{args.command}_command", None)
    try:
        COMMANDS[args.command, sub](args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"mmc-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
