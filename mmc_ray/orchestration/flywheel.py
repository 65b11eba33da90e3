"""`mmc-ray pipeline`: the whole method in one run folder, round after round.

    RUN/
      config.yaml                 the resolved config of the run
      eval-problems.parquet       held-out problems, refined and evaluated every round
      mmc-dataset/                the critic's data, growing every round
      refine-oracle/              refinement with the rule (oracle) critic: the bound (once per run)
      refine-blind/               refinement with the blind critic (always revise): the floor (once)
      round-1/
        problems.parquet          this round's new training problems
        trees/                    MCTS over them
        critic/                   the critic trained this round (hf/ is the export)
        actor-sft/, actor/        with pipeline.retrain_actor: the actor's correct paths, and the
                                  actor fine-tuned on them (hf/ searches and refines next round)
        refine-train/             the critic at work on the training problems (next round's data)
        refine/                   the critic at work on the held-out problems: records/, report/
      report.md, report.json      every round side by side
      invocations.jsonl           each run of the command on this folder (the report's total time)

Round r: search new problems → annotate into the dataset → train the critic (from round r-1's
critic) → refine the held-out problems with it and evaluate → refine this round's training problems
and critique the actor's answers into the dataset for round r+1 → optionally fine-tune the actor on
its own correct search paths (STaR-style) for round r+1. Every stage resumes from what is
already on disk, so rerunning the command after a crash continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmc_ray.config import Config, config_to_dict
from mmc_ray.config.adapter_names import ADAPTER_CONFIG
from mmc_ray.config.engine_kinds import engine_kind
from mmc_ray.engines.factory import engine_source
from mmc_ray.errors import BadInput
from mmc_ray.eval.metrics import RefinementMetrics
from mmc_ray.eval.plot import line_chart
from mmc_ray.eval.report import Report, pct
from mmc_ray.orchestration import commands
from mmc_ray.store.layout import (
    RoundLayout,
    RunLayout,
    adapter_dir,
    export_dir,
    fit_figures_file,
    records_dir,
    tree_shards,
)
from mmc_ray.tasks.problem import Problem, read_problems, write_problems


def trained_critic_kind(cfg: Config) -> str:
    """The engine that runs the critic a round trains: the config's when it loads a local model (hf,
    vllm), else hf (a rule or served critic in the config is not the one being trained)."""
    return cfg.critic.kind if engine_kind(cfg.critic.kind).local_model else "hf"


def adapter_rounds(cfg: Config) -> bool:
    """Whether each round's critic is a LoRA adapter on the first round's base (`train.lora` without
    a merged export), rather than a model of its own that the next round starts from."""
    return cfg.train.lora.enabled and not cfg.train.lora.merged


def round_adapter(round_index: int) -> str:
    return f"critic-r{round_index}"


def _round_config(cfg: Config, round_index: int, init_model: str, critic_dir: Path,
                  actor_model: str) -> Config:
    tasks = dataclasses.replace(cfg.tasks, seed=cfg.tasks.seed + round_index - 1)
    critic = dataclasses.replace(cfg.critic, kind=trained_critic_kind(cfg),
                                 model_path=str(export_dir(critic_dir)))
    if adapter_rounds(cfg):  # the base, with this round's adapter as the critic's default
        name = round_adapter(round_index)
        critic = dataclasses.replace(critic, model_path=init_model, adapter=name,
                                     adapters=(f"{name}={adapter_dir(critic_dir)}",))
    return dataclasses.replace(
        cfg, tasks=tasks, train=dataclasses.replace(cfg.train, init_model=init_model), critic=critic,
        actor=dataclasses.replace(cfg.actor, model_path=actor_model))


def _retrain_actor(cfg: Config, rdir: RoundLayout, problems: list[Problem]) -> tuple[str, dict[str, Any]]:
    """Fine-tune this round's actor on its correct search paths; returns the actor for the next
    round (this one, unchanged, when the trees hold no correct path) and the figures."""
    from mmc_ray.stages.actor_data import write_actor_data

    out = rdir.actor
    data = write_actor_data(rdir.trees, problems, rdir.actor_data, cfg.pipeline.actor_paths_per_problem)
    figures: dict[str, Any] = {"solutions": data.rows, "problems": data.problems}
    print(f"actor data: {data.rows} correct paths of {data.problems} problems in {data.path}")
    if data.rows == 0:
        print("actor: no correct path in this round's trees; the next round keeps this actor")
        return cfg.actor.model_path, figures
    # The actor is loaded as a model of its own: with train.lora its fit exports the merged model too.
    lora = dataclasses.replace(cfg.train.lora, merged=True)
    acfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, task="actor-sft", init_model=cfg.actor.model_path, max_steps=cfg.pipeline.actor_max_steps,
        lora=lora))
    return str(export_dir(out)), {**figures, **_train_once(acfg, data.path.parent, out, model="actor")}


def _train_once(cfg: Config, data: Path, out: Path, model: str = "critic") -> dict[str, Any]:
    """Train unless this round's `model` is already exported (its figures are then the ones its
    fit recorded); resume a half-finished fit."""
    from mmc_ray.train.checkpoints import latest_checkpoint

    as_adapter = model == "critic" and adapter_rounds(cfg)
    exported = adapter_dir(out) if as_adapter else export_dir(out)
    if (exported / (ADAPTER_CONFIG if as_adapter else "config.json")).exists():
        print(f"train: {model} already exported at {exported}")
        recorded = fit_figures_file(out)
        return json.loads(recorded.read_text()) if recorded.exists() else {}
    return _fit_figures(commands.train(cfg, data, out, resume=latest_checkpoint(out) is not None), out)


def _fit_figures(summary: Any, out: Path) -> dict[str, Any]:
    """The fit's figures for the report, also kept beside the export for a rerun's report."""
    figures = {"steps": summary.metrics.get("step"), "final_loss": summary.metrics.get("loss"),
               "seconds": round(summary.seconds, 1)}
    fit_figures_file(out).write_text(json.dumps(figures))
    return figures


def _problems(cfg: Config, path: Path, n: int, seed: int) -> Path:
    if not path.exists():
        commands.write_tasks(dataclasses.replace(cfg.tasks, n=n, seed=seed), path)
    return path


@dataclass(frozen=True)
class UserProblems:
    """A user's training and held-out problems (`--problems`, `--eval-problems`), loaded once."""

    train: list[Problem]
    eval: list[Problem]

    @classmethod
    def load(cls, cfg: Config, train_file: Path, eval_file: Path) -> UserProblems:
        from mmc_ray.tasks.benchmark import load_problem_file

        train = load_problem_file(train_file, duplicate_ids=cfg.tasks.duplicate_ids)
        held_out = load_problem_file(eval_file, duplicate_ids=cfg.tasks.duplicate_ids)
        shared = sorted({p.problem_id for p in train} & {p.problem_id for p in held_out})
        if shared:
            raise BadInput(f"--problems and --eval-problems share {len(shared)} problem id(s) (e.g. "
                           f"{', '.join(shared[:3])}): held-out problems must never be searched")
        if cfg.annotate.method == "rule" and any(not p.steps for p in train):
            raise BadInput("annotate.method=rule needs ground-truth step programs, which problems from "
                           f"{train_file} do not have: use annotate.method=mc (model-free, from the "
                           f"search's values) or annotate.method=llm (the `annotator` engine)")
        return cls(train, held_out)

    def round_slice(self, cfg: Config, round_index: int) -> list[Problem]:
        per_round = cfg.pipeline.problems_per_round or cfg.tasks.n
        chunk = self.train[(round_index - 1) * per_round: round_index * per_round]
        if not chunk:
            raise BadInput(f"--problems has {len(self.train)} problems; round {round_index} would start at "
                           f"problem {(round_index - 1) * per_round + 1} ({per_round} per round): lower "
                           f"pipeline.rounds or pipeline.problems_per_round")
        return chunk


def _written(problems: list[Problem], path: Path) -> Path:
    """`problems` in our problems format at `path` (kept from an earlier invocation: resumable)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_problems(problems, path)
    return path


def _oracle_kind(problems: list[Problem]) -> str:
    """rule: the ground-truth step programs judge every step; answer: only final answers are known."""
    return "rule" if all(p.steps for p in problems) else "answer"


def run_pipeline(cfg: Config, run_dir: Path, problems_file: Path | None = None,
                 eval_file: Path | None = None) -> dict[str, Any]:
    """Run (or continue) every round of the pipeline in `run_dir`; returns the summary it writes.
    `problems_file` / `eval_file`: the user's problems (both or neither); without them the rounds
    search synthetic tasks."""
    from mmc_ray.stages.annotate import annotate_refinement_to_dir
    from mmc_ray.stages.dataset_card import card_stats

    run = RunLayout.at(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run.config.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    pcfg = cfg.pipeline
    start = time.perf_counter()
    if (problems_file is None) != (eval_file is None):
        raise BadInput("--problems and --eval-problems go together: the rounds search one, every round "
                       "is evaluated on the other")
    user = UserProblems.load(cfg, problems_file, eval_file) if problems_file is not None else None
    if user is None:
        eval_path = _problems(cfg, run.eval_problems, pcfg.eval_problems, pcfg.eval_seed)
    else:
        eval_path = _written(user.eval, run.eval_problems)
    dataset = run.dataset
    summary: dict[str, Any] = {"run": str(run_dir), "rounds": [],
                               "problems": str(problems_file) if problems_file else "synthetic tasks"}
    if pcfg.oracle_baseline:
        kind = _oracle_kind(read_problems(eval_path))
        oracle = dataclasses.replace(cfg, critic=dataclasses.replace(cfg.critic, kind="rule",
                                                                     problems=str(eval_path.resolve())))
        what = "ground-truth steps" if kind == "rule" else "final answers only: no step programs"
        print(f"\n== oracle baseline: refinement with the {kind} oracle critic ({what}) ==")
        report = commands.refine(oracle, eval_path, run.oracle_refine, title=f"oracle ({kind}) critic")
        summary["oracle"] = {"kind": kind, **round_figures(report)}
    if pcfg.blind_baseline:
        # Best-of-N with a critic that scores every answer alike is the first sample: refinement only.
        blind = dataclasses.replace(cfg, critic=dataclasses.replace(cfg.critic, kind="blind"),
                                    refine=dataclasses.replace(cfg.refine, strategy="refine"))
        print("\n== blind baseline: refinement with a critic that sends every answer back ==")
        report = commands.refine(blind, eval_path, run.blind_refine, title="blind critic (always revise)")
        summary["blind"] = round_figures(report)
    init_model, actor_model = cfg.train.init_model, cfg.actor.model_path
    for r in range(1, pcfg.rounds + 1):
        rdir = run.round(r)
        rcfg = _round_config(cfg, r, init_model, rdir.critic, actor_model)
        print(f"\n== round {r}/{pcfg.rounds} ==")
        if user is None:
            train_path = _problems(rcfg, rdir.problems, rcfg.tasks.n, rcfg.tasks.seed)
        else:
            train_path = _written(user.round_slice(cfg, r), rdir.problems)
        fresh = not tree_shards(rdir.trees) and not rdir.critic.exists()
        if pcfg.streaming and fresh:
            from mmc_ray.orchestration.streaming import streamed_round

            print("search → annotate → train, streamed")
            summary_r = streamed_round(rcfg, train_path, rdir.trees, dataset, rdir.critic)
            commands.print_train_summary(summary_r)
            trained = _fit_figures(summary_r, rdir.critic)
        else:  # stage by stage; each stage resumes from what is on disk
            commands.search(rcfg, train_path, rdir.trees)
            commands.annotate(rcfg, rdir.trees, dataset)
            trained = _train_once(rcfg, dataset, rdir.critic)
        # The critic just trained (hf or vllm, as the config names) refines both problem sets on one
        # set of workers; they go before the next round's search and fit need the GPUs.
        # Refinement answers are no search paths: the mc annotator, which reads node values, cannot
        # critique them (rule and llm can).
        refine_train = pcfg.refine_train_problems and r < pcfg.rounds and cfg.annotate.method != "mc"
        if pcfg.refine_train_problems and r < pcfg.rounds and not refine_train:
            print("annotate: refinement answers on training problems are not critiqued with "
                  "annotate.method=mc (they carry no search values)")
        with commands.refine_engines(rcfg) as engines:
            report = commands.refine(rcfg, eval_path, rdir.refine, title=f"round {r} critic", engines=engines)
            if refine_train:  # its records are critic data: refinement only, no best-of-N samples
                only_refine = dataclasses.replace(
                    rcfg, refine=dataclasses.replace(rcfg.refine, strategy="refine"))
                commands.refine(only_refine, train_path, rdir.refine_train,
                                title=f"round {r} critic on training problems", engines=engines)
        if refine_train:
            from mmc_ray.eval.report import read_refine_rows
            from mmc_ray.refine.records import RefineRecord

            records = [RefineRecord.from_row(r) for r in read_refine_rows(records_dir(rdir.refine_train))]
            added = annotate_refinement_to_dir(records, read_problems(train_path), dataset, rcfg)
            print(f"annotate: {added.critiques} critiques of refinement answers added to {dataset}")
        actor: dict[str, Any] = {"model": _actor_name(rcfg)}
        if pcfg.retrain_actor and r < pcfg.rounds:
            actor_model, actor["fine_tuned"] = _retrain_actor(rcfg, rdir, read_problems(train_path))
        summary["rounds"].append({"round": r, "dataset_rows": card_stats(dataset)["rows"],
                                  "train": trained, "actor": actor, **round_figures(report),
                                  "report": str(report.markdown)})
        if adapter_rounds(cfg):
            summary["rounds"][-1]["adapter"] = {round_adapter(r): str(adapter_dir(rdir.critic))}
        else:
            init_model = str(export_dir(rdir.critic))
    if adapter_rounds(cfg):
        specs = " ".join(f"--adapter {name}={path}"
                         for r in summary["rounds"] for name, path in r["adapter"].items())
        print(f"\nevery round's critic is an adapter on {init_model}; serve them side by side:\n"
              f"  mmc-ray serve --checkpoint {init_model} {specs}")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    earlier = _earlier_invocations(run)
    summary["invocations"] = len(earlier) + 1
    summary["seconds_all_invocations"] = round(sum(i["seconds"] for i in earlier) + summary["seconds"], 1)
    _write_summary(summary, run)
    return summary


def _actor_name(cfg: Config) -> str:
    """What answered: a local model's path, a server, or the engine (`simulated actor`)."""
    kind = engine_kind(cfg.actor.kind)
    source = engine_source(cfg.actor)
    return f"{kind.name}:{source}" if kind.served else source if kind.local_model else f"{source} actor"


def _earlier_invocations(run: RunLayout) -> list[dict[str, Any]]:
    if not run.invocations.exists():
        return []
    return [json.loads(line) for line in run.invocations.read_text().splitlines() if line.strip()]


def record_invocation(run_dir: Path, started: float, outcome: str) -> None:
    """Append this run of the command to the folder's invocations (the report sums their time)."""
    run = RunLayout.at(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
             "seconds": round(time.time() - started, 1), "outcome": outcome}
    with run.invocations.open("a") as f:
        f.write(json.dumps(entry) + "\n")


@dataclass(frozen=True)
class RoundFigures:
    """What the pipeline report shows of one critic's refinement run (a round's, the oracle's, the
    blind one's); `round_figures` puts them in the run's report.json."""

    single_pass_accuracy: float | None
    final_accuracy: float | None
    accuracy_by_round: list[float | None]
    wrong_to_right: int
    right_to_wrong: int
    verdict_accuracy: float | None
    parse_rate: float | None
    processbench_f1: float | None
    step_f1: float | None

    @classmethod
    def of(cls, m: RefinementMetrics) -> RoundFigures:
        c = m.critic
        return cls(m.single_pass_accuracy, m.final_accuracy, m.accuracy_by_round, m.wrong_to_right,
                   m.right_to_wrong, c.verdict_accuracy, c.parse_rate, c.processbench_f1, c.step_f1)


def round_figures(report: Report) -> dict[str, Any]:
    """A refinement report's `RoundFigures`, with its best-of-N figures when it sampled them."""
    if report.refinement is None:
        raise ValueError("the pipeline measures each critic by refinement; this report has none")
    best = {"best_of_n": dataclasses.asdict(report.best_of_n)} if report.best_of_n else {}
    return {**dataclasses.asdict(RoundFigures.of(report.refinement)), **best}


def _best_of_n_lines(summary: dict[str, Any]) -> list[str]:
    """The best-of-N table (refine.strategy=both): accuracy by N, picked by each critic's P(correct)."""
    rows = [(f"round {r['round']} (trained)", r["best_of_n"]) for r in summary["rounds"] if "best_of_n" in r]
    if "best_of_n" in summary.get("oracle", {}):
        rows.append((f"oracle ({summary['oracle']['kind']})", summary["oracle"]["best_of_n"]))
    if not rows:
        return []
    ns = rows[0][1]["n"]
    return ["Best-of-N on the held-out problems: the critic picks one of N sampled answers by its "
            "P(correct).", "",
            "| critic | " + " | ".join(f"N={n}" for n in ns)
            + f" | majority vote, N={ns[-1]} | any correct, N={ns[-1]} |", "|---" * (len(ns) + 3) + "|",
            *(f"| {name} | " + " | ".join(map(pct, b["best_of_n_p_correct"]))
              + f" | {pct(b['majority_vote'][-1])} | {pct(b['any_correct'][-1])} |" for name, b in rows), ""]


def _write_summary(summary: dict[str, Any], run: RunLayout) -> None:
    run.report_json.write_text(json.dumps(summary, indent=2, default=str))
    header = ("| critic | critique rows | single pass | after refinement | wrong→right | right→wrong | "
              "critic parsed | verdict acc. | ProcessBench F1 | step F1 |\n" + "|---" * 10 + "|")
    lines = [_critic_row(f"round {r['round']} (trained)", str(r["dataset_rows"]), r)
             for r in summary["rounds"]]
    for key, name in (("oracle", f"oracle ({summary.get('oracle', {}).get('kind')})"),
                      ("blind", "blind (always revise)")):
        if key in summary:
            lines.append(_critic_row(name, "-", summary[key]))
    text = "\n".join([
        f"# mmc-ray pipeline: {summary['run']}", "",
        f"Problems: {summary['problems']}. Held-out problems refined by the actor with each round's "
        "trained critic, with the oracle critic (rule: ground-truth steps; answer: final answers "
        "only) as the bound, and with the blind critic (every answer sent back for revision) as the "
        "floor: a critic helps by what it gains over the blind one.", "", *_verdict_lines(summary),
        header, *lines, "", *_critics_plot_lines(summary, run.report_md.parent), *_best_of_n_lines(summary),
        *(f"- round {r['round']}: {r['report']}; actor {r['actor']['model']}" for r in summary["rounds"]),
        _time_line(summary), "",
    ])
    run.report_md.write_text(text)
    print(f"\n{text}")


def _critic_row(name: str, rows: str, figures: dict[str, Any]) -> str:
    """One critic's line of the report's table, from its `RoundFigures` in report.json."""
    f = RoundFigures(**{k: figures[k] for k in RoundFigures.__dataclass_fields__})
    cells = [name, rows, pct(f.single_pass_accuracy), pct(f.final_accuracy), str(f.wrong_to_right),
             str(f.right_to_wrong), pct(f.parse_rate), pct(f.verdict_accuracy), pct(f.processbench_f1),
             pct(f.step_f1)]
    return "| " + " | ".join(cells) + " |"


def _verdict_lines(summary: dict[str, Any]) -> list[str]:
    """Whether the last round's trained critic beat the blind floor, the question the demo answers."""
    if "blind" not in summary or not summary["rounds"]:
        return []
    trained, blind = summary["rounds"][-1], summary["blind"]
    beat = "beat" if trained["final_accuracy"] > blind["final_accuracy"] else "did not beat"
    return [f"**The trained critic (round {trained['round']}) {beat} the blind floor:** refinement took "
            f"the held-out problems from {pct(trained['single_pass_accuracy'])} to "
            f"{pct(trained['final_accuracy'])} with it, to {pct(blind['final_accuracy'])} with the blind "
            "critic.", ""]


def _critics_plot_lines(summary: dict[str, Any], folder: Path) -> list[str]:
    """Accuracy by refinement round with each round's trained critic, the blind and the oracle one."""
    series = {f"round {r['round']} (trained)": r["accuracy_by_round"] for r in summary["rounds"]}
    for key, name in (("blind", "blind"), ("oracle", "oracle")):
        if key in summary:
            series[name] = summary[key]["accuracy_by_round"]
    if not series:
        return []
    line_chart(series, folder / "critics_by_round.png", "Held-out accuracy by refinement round",
               "round (0 = single pass)", "accuracy")
    return ["![accuracy by round: trained, blind and oracle critics](critics_by_round.png)", ""]


def _time_line(summary: dict[str, Any]) -> str:
    if summary["invocations"] == 1:
        return f"- {summary['seconds']:.0f}s in all"
    return (f"- {summary['seconds_all_invocations']:.0f}s in all over {summary['invocations']} invocations "
            f"(this one {summary['seconds']:.0f}s)")
