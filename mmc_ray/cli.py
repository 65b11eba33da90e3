"""`mmc-ray` command line: one subcommand per stage, config from YAML plus dotted overrides.

    mmc-ray tasks generate --n 1000 --out problems.parquet
    mmc-ray model build-tiny --out runs/tiny-vlm
    mmc-ray model pretrain-tiny --out models/tiny-seeing
    mmc-ray generate --problems problems.parquet --out results.parquet actor.kind=simulated
    mmc-ray search --problems problems.parquet --out trees/ actor.kind=simulated
    mmc-ray annotate --trees trees/ --out mmc-dataset/
    mmc-ray train --task critic --data mmc-dataset/ --out runs/critic
    mmc-ray refine --problems eval.parquet --out refined/ --critic-model runs/critic/hf
    mmc-ray eval --refine refined/ --out report/
    mmc-ray pipeline --out runs/pipeline --rounds 2
    mmc-ray demo --out runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from mmc_ray.config import Config, load_config
from mmc_ray.errors import BadInput, MissingInput, UserError, root_cause
from mmc_ray.models.shipped import SEEING_BASE
from mmc_ray.orchestration import commands, preflight
from mmc_ray.ray_runtime import listen_on_all_interfaces, quiet_workers, ray_logs_dir

log = logging.getLogger("mmc_ray")
RUN_LOG = "mmc-ray.log"
RUN_FOLDER_COMMANDS = ("train", "refine", "pipeline", "demo")  # whose --out is a run folder


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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of every error")
    parser.add_argument("--ray-all-interfaces", action="store_true",
                        help="a Ray this command starts listens on the machine's address, so other "
                        "machines can join it (default: loopback only); a RAY_ADDRESS cluster is unaffected")
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
    pretrain = model.add_parser("pretrain-tiny", help="teach the tiny Qwen2-VL to read its images: the "
                                "staged recipe (vision tower on the renderers' facts, descriptions, "
                                "reference solutions) behind the shipped base; sizes and steps: pretrain.*")
    pretrain.add_argument("--out", type=Path, required=True)
    _add_config_args(pretrain)

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
    annotate.add_argument("--method", choices=["rule", "mc", "llm"], help="shortcut for annotate.method")
    annotate.add_argument("--local", action="store_true", help="run in this process instead of Ray Data")
    _add_config_args(annotate)

    train = commands.add_parser("train", help="train the critic (or actor SFT) with Ray Train + DeepSpeed")
    train.add_argument("--task", choices=["critic", "annotator", "actor-sft"], help="shortcut for train.task")
    train.add_argument("--data", type=Path, required=True,
                       help="critic: a dataset folder from `annotate`; actor-sft: a folder of problem files")
    train.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, hf/ export)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.add_argument("--serve-app", metavar="APP",
                       help="when exported, hot-swap the critic of this running `mmc-ray serve` app")
    _add_config_args(train)

    refine = commands.add_parser("refine", help="actor-critic refinement of a problem file, and its report")
    refine.add_argument("--problems", type=Path, required=True,
                        help="problems Parquet, or a MathVista/MathVerse-style .jsonl/.parquet")
    refine.add_argument("--out", type=Path, required=True, help="folder for records/ and report/")
    refine.add_argument("--critic-model", help="shortcut for critic.kind=hf critic.model_path=PATH")
    refine.add_argument("--critic-url", help="shortcut for critic.kind=openai critic.openai.base_url=URL")
    refine.add_argument("--local", action="store_true", help="run engines in this process, not Ray workers")
    _add_config_args(refine)

    evaluate = commands.add_parser("eval", help="evaluation report from refinement records")
    evaluate.add_argument("--refine", type=Path, required=True, help="folder written by `mmc-ray refine`")
    evaluate.add_argument("--out", type=Path, help="report folder (default: <refine>/report)")

    bench = commands.add_parser("eval-critic", help="score a critic on step-labelled solutions: ProcessBench "
                                "F1 and step macro-F1, per data source")
    bench.add_argument("--bench", type=Path, required=True,
                       help="a VisualProcessBench-layout test.jsonl (images beside it), or an MMC dataset "
                            "folder (its test split)")
    bench.add_argument("--out", type=Path, required=True, help="folder for report.json and judged.jsonl")
    bench.add_argument("--critic-model", help="shortcut for critic.kind=hf critic.model_path=PATH")
    bench.add_argument("--critic-url", help="shortcut for critic.kind=openai critic.openai.base_url=URL "
                                            "(step scores from its /v1/score_steps, when it has one)")
    bench.add_argument("--limit", type=int, help="only the first N solutions (a quick look)")
    _add_config_args(bench)

    serve_cmd = commands.add_parser("serve", help="serve the critic with Ray Serve (OpenAI-compatible API + "
                                    "/v1/critique); run again with a new --checkpoint to hot-swap it")
    serve_cmd.add_argument("--checkpoint", help="shortcut for serve.checkpoint (a critic hf/ folder)")
    serve_cmd.add_argument("--host", help="shortcut for serve.host (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="shortcut for serve.port")
    serve_cmd.add_argument("--backend", choices=("hf", "vllm"),
                           help="shortcut for serve.backend: hf (our engine, CPU) or vllm (Ray Serve LLM)")
    serve_cmd.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                           help="also serve this LoRA adapter of the checkpoint as model NAME (repeatable; "
                                "adds to critic.adapters; backend hf)")
    serve_cmd.add_argument("--write-openapi", type=Path, metavar="PATH",
                           help="write the API's OpenAPI spec to PATH and exit")
    serve_cmd.add_argument("--detach", action="store_true", help="deploy and return (the cluster serves on)")
    _add_config_args(serve_cmd)

    adapters = commands.add_parser("adapters", help="load, alias and unload LoRA adapters of a running "
                                   "critic app on every replica, without a redeploy (backend hf); no change: "
                                   "list them")
    adapters.add_argument("--app", default="mmc-critic", help="the app (default: serve's mmc-critic)")
    adapters.add_argument("--load", action="append", default=[], metavar="NAME=PATH",
                          help="load this adapter under a new version name (repeatable)")
    adapters.add_argument("--alias", action="append", default=[], metavar="ALIAS=NAME",
                          help="point ALIAS at version NAME, after the loads (repeatable)")
    adapters.add_argument("--unload", action="append", default=[], metavar="NAME",
                          help="unload version NAME (or drop alias NAME), after the aliases move; each "
                               "replica unloads it once no request holds it (repeatable)")

    for name, help_text in (("pipeline", "search, annotate, train the critic, refine + eval; in rounds"),
                            ("demo", "the pipeline offline, its critic from the shipped seeing base")):
        pipeline = commands.add_parser(name, help=help_text)
        pipeline.add_argument("--out", type=Path, default=Path(f"runs/{name}"), help="run folder (resumable)")
        pipeline.add_argument("--rounds", type=int, help="shortcut for pipeline.rounds")
        pipeline.add_argument("--tiny-model", action="store_true",
                              help="build the tiny random-weight model in <out>/tiny-vlm and train the "
                                   "critic from it" + (", not the seeing base" if name == "demo" else ""))
        pipeline.add_argument("--problems", type=Path, metavar="TRAIN",
                              help="your training problems (JSONL, Parquet, a datasets.save_to_disk folder): "
                                   "each round searches the next pipeline.problems_per_round of them; "
                                   "without it, synthetic tasks")
        pipeline.add_argument("--eval-problems", type=Path, metavar="EVAL",
                              help="your held-out problems, refined and evaluated every round, never "
                                   "searched")
        _add_config_args(pipeline)
    return parser


def _config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    return load_config(args.config, [*args.overrides, *extra])


def cmd_tasks_generate(args: argparse.Namespace) -> None:
    cfg = _config(args).tasks
    cfg = dataclasses.replace(cfg, **{k: v for k in ("n", "seed", "families", "difficulties")
                                      if (v := getattr(args, k)) is not None})
    commands.write_tasks(cfg, args.out)


def cmd_model_build_tiny(args: argparse.Namespace) -> None:
    from mmc_ray.models.tiny import build_tiny_vlm

    cfg = _config(args)
    path = build_tiny_vlm(cfg.tiny_model, args.out, cfg.actor.min_pixels, cfg.actor.max_pixels)
    print(f"built tiny Qwen2-VL at {path}")


def cmd_model_pretrain_tiny(args: argparse.Namespace) -> None:
    commands.pretrain_tiny(_config(args), args.out)


def cmd_generate(args: argparse.Namespace) -> None:
    cfg = _config(args, [f"actor.kind={args.engine}"] if args.engine else [])
    preflight.require(preflight.input_problems([("--problems", args.problems)])
                      + preflight.engine_problems("actor", cfg.actor), "generate")
    summary = commands.generate(cfg, args.problems, args.out)
    commands.print_generate_summaries([summary])


def cmd_search(args: argparse.Namespace) -> None:
    cfg = _config(args, [f"actor.kind={args.engine}"] if args.engine else [])
    preflight.require(preflight.input_problems([("--problems", args.problems)])
                      + preflight.engine_problems("actor", cfg.actor) + preflight.output_problems(args.out),
                      "search")
    commands.search(cfg, args.problems, args.out, local=args.local)


def cmd_annotate(args: argparse.Namespace) -> None:
    cfg = _config(args, [f"annotate.method={args.method}"] if args.method else [])
    annotator = preflight.engine_problems("annotator", cfg.annotator) if cfg.annotate.method == "llm" else []
    preflight.require(preflight.input_problems([("--trees", args.trees)]) + annotator, "annotate")
    commands.annotate(cfg, args.trees, args.out, local=args.local)


def cmd_train(args: argparse.Namespace) -> None:
    cfg = _config(args, [f"train.task={args.task}"] if args.task else [])
    summary = commands.train(cfg, args.data, args.out, resume=args.resume)
    if args.serve_app:
        from mmc_ray.serve.checkpoints import swap_checkpoint

        swap_checkpoint(args.serve_app, str(summary.exported))
        print(f"serve: app {args.serve_app} now loads {summary.exported}")


def _critic_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.critic_model:
        extra += ["critic.kind=hf", f"critic.model_path={args.critic_model}"]
    if args.critic_url:
        extra += ["critic.kind=openai", f"critic.openai.base_url={args.critic_url}"]
    return extra


def cmd_refine(args: argparse.Namespace) -> None:
    cfg = _config(args, _critic_overrides(args))
    preflight.require(preflight.input_problems([("--problems", args.problems)])
                      + preflight.engine_problems("actor", cfg.actor)
                      + preflight.engine_problems("critic", cfg.critic) + preflight.output_problems(args.out),
                      "refine")
    commands.refine(cfg, args.problems, args.out, local=args.local)


def cmd_eval(args: argparse.Namespace) -> None:
    from mmc_ray.store.layout import best_of_n_dir, records_dir, report_dir

    out = args.out or report_dir(args.refine)
    commands.report(records_dir(args.refine), out, {"title": str(args.refine)}, best_of_n_dir(args.refine))


def cmd_eval_critic(args: argparse.Namespace) -> None:
    cfg = _config(args, _critic_overrides(args))
    preflight.require(preflight.input_problems([("--bench", args.bench)])
                      + preflight.engine_problems("critic", cfg.critic) + preflight.output_problems(args.out),
                      "eval-critic")
    commands.eval_critic(cfg, args.bench, args.out, args.limit)


def cmd_serve(args: argparse.Namespace) -> None:
    import time

    from mmc_ray.serve.deploy import deploy

    if args.write_openapi:
        from mmc_ray.serve.app import openapi_spec

        args.write_openapi.write_text(openapi_spec())
        print(f"wrote {args.write_openapi}")
        return
    extra = [f"serve.{key}={value}" for key in ("checkpoint", "host", "port", "backend")
             if (value := getattr(args, key)) is not None]
    cfg = _config(args, extra)
    if args.adapter:
        cfg = dataclasses.replace(cfg, critic=dataclasses.replace(
            cfg.critic, adapters=(*cfg.critic.adapters, *args.adapter)))
    if not (Path(cfg.serve.checkpoint) / "config.json").exists():
        raise MissingInput(f"no critic at {cfg.serve.checkpoint} (serve.checkpoint / --checkpoint)")
    url = deploy(cfg)
    adapters = ", ".join(spec.partition("=")[0] for spec in cfg.critic.adapters)
    print(f"critic {cfg.serve.served_model} ({cfg.serve.checkpoint}, backend {cfg.serve.backend}) "
          f"{f'with adapters {adapters} ' if adapters else ''}serving at {url}\n"
          f"  OpenAI-compatible: {url}/v1/chat/completions   structured: {url}/v1/critique   "
          f"docs: {url}/docs")
    if args.detach:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()


def cmd_adapters(args: argparse.Namespace) -> None:
    from mmc_ray.config.adapter_names import parse_adapter_specs
    from mmc_ray.ray_runtime import init_ray
    from mmc_ray.serve.checkpoints import change_adapters

    aliases = {}
    for spec in args.alias:
        alias, _, target = spec.partition("=")
        if not alias or not target:
            raise BadInput(f"--alias {spec!r}: expected ALIAS=NAME (NAME: a loaded adapter version)")
        aliases[alias] = target
    init_ray()
    served = change_adapters(args.app, parse_adapter_specs(args.load), aliases, args.unload)
    for name, path in served.paths.items():
        pointed = ", ".join(sorted(a for a, target in served.aliases.items() if target == name))
        print(f"{name}\t{path}" + (f"\t(alias: {pointed})" if pointed else ""))
    if args.load or args.alias or args.unload:
        print(f"app {args.app}: every replica follows within serve.checkpoint_poll_s")


def cmd_pipeline(args: argparse.Namespace) -> None:
    import time

    from mmc_ray.orchestration.flywheel import record_invocation, run_pipeline

    extra = [f"pipeline.rounds={args.rounds}"] if args.rounds else []
    model_path = args.out / "tiny-vlm" if args.tiny_model else None
    if model_path:
        extra.append(f"train.init_model={model_path}")
    elif args.command == "demo" and not any(o.startswith("train.init_model=") for o in args.overrides):
        extra.append(f"train.init_model={SEEING_BASE}")
    cfg = _config(args, extra)
    preflight.require(preflight.pipeline_problems(cfg, args.out, tiny_model=model_path)
                      + preflight.input_problems([("--problems", args.problems),
                                                  ("--eval-problems", args.eval_problems)]), args.command)
    if model_path and not (model_path / "config.json").exists():
        from mmc_ray.models.tiny import build_tiny_vlm

        build_tiny_vlm(cfg.tiny_model, model_path, cfg.critic.min_pixels, cfg.critic.max_pixels)
        print(f"built tiny Qwen2-VL (random weights) at {model_path}")
    started, outcome = time.time(), "failed"
    try:
        run_pipeline(cfg, args.out, problems_file=args.problems, eval_file=args.eval_problems)
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        record_invocation(args.out, started, outcome)


COMMANDS = {
    ("tasks", "generate"): cmd_tasks_generate,
    ("model", "build-tiny"): cmd_model_build_tiny,
    ("model", "pretrain-tiny"): cmd_model_pretrain_tiny,
    ("generate", None): cmd_generate,
    ("search", None): cmd_search,
    ("annotate", None): cmd_annotate,
    ("train", None): cmd_train,
    ("refine", None): cmd_refine,
    ("eval", None): cmd_eval,
    ("eval-critic", None): cmd_eval_critic,
    ("serve", None): cmd_serve,
    ("adapters", None): cmd_adapters,
    ("pipeline", None): cmd_pipeline,
    ("demo", None): cmd_pipeline,
}


class _NotLibraryWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "py.warnings"


def _set_up_logging(args: argparse.Namespace) -> Path | None:
    """The console gets our warnings and errors (-v: everything); a run folder's `mmc-ray.log` gets
    everything at INFO, library warnings (`warnings.warn`) included. Returns the log file's path."""
    logging.captureWarnings(True)
    console = logging.StreamHandler()
    handlers: list[logging.Handler] = [console]
    if not args.verbose:
        console.setLevel(logging.WARNING)
        console.addFilter(_NotLibraryWarnings())
    run_log = None
    if args.command in RUN_FOLDER_COMMANDS:
        run_log = args.out / RUN_LOG
        run_log.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(run_log)
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_log


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before, between or after options (argparse alone stops at the first option).
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    run_log = _set_up_logging(args)
    sub = getattr(args, f"{args.command}_command", None)
    quiet_workers(not args.verbose)
    listen_on_all_interfaces(args.ray_all_interfaces)
    try:
        COMMANDS[args.command, sub](args)
        logs = [f"{run_log} (this run)"] if run_log else []
        if ray_dir := ray_logs_dir():
            log.info("Ray worker logs: %s", ray_dir)
            logs.append(f"{ray_dir} (Ray workers)")
        if logs and not args.verbose:
            print(f"logs: {'; '.join(logs)}; -v shows them here")
    except Exception as e:  # what the user can fix, or lost capacity: one line; a bug keeps its traceback
        cause = root_cause(e)
        if cause is None:
            raise
        if args.verbose:
            traceback.print_exc()
        if isinstance(cause, UserError):
            print(f"mmc-ray {args.command}: error: {cause}", file=sys.stderr)
            return 2
        print(f"mmc-ray {args.command}: stopped: {cause}. Finished work is kept; rerun the command once the "
              f"cluster has its workers back to go on.", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
