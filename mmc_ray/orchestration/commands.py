"""Each stage run with its summary printed: what the stage subcommands and the pipeline share.

Heavy imports (torch, Ray, the engines) happen inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmc_ray.config import Config, TasksConfig
from mmc_ray.engines.factory import engine_source
from mmc_ray.errors import BadInput
from mmc_ray.store.layout import best_of_n_dir, records_dir, report_dir, tree_shards

if TYPE_CHECKING:  # for the annotations only: importing them is what the functions do lazily
    from mmc_ray.eval.report import Report
    from mmc_ray.stages.critic_bench import CriticBenchRun
    from mmc_ray.stages.generate import GenerateSummary
    from mmc_ray.stages.search import SearchSummary
    from mmc_ray.train.trainer import TrainSummary


def write_tasks(cfg: TasksConfig, out: Path) -> int:
    from tqdm import tqdm

    from mmc_ray.tasks.problem import write_problems
    from mmc_ray.tasks.synthetic import generate_problems

    problems = tqdm(generate_problems(cfg.n, seed=cfg.seed, families=cfg.families,
                                      difficulties=cfg.difficulties, image_size=cfg.image_size),
                    total=cfg.n, desc="tasks", unit="problem")
    count = write_problems(problems, out)
    print(f"wrote {count} problems to {out}")
    return count


def pretrain_tiny(cfg: Config, out: Path) -> dict[str, Any]:
    """The staged recipe that teaches the tiny VLM to see; its held-out perception figures printed."""
    from mmc_ray.train.pretrain_tiny import pretrain_tiny as run_recipe

    report = run_recipe(cfg.pretrain, out)
    print(f"{'family':<12}{'read_accuracy':>15}{'most common value':>20}")
    for family, m in report["perception"].items():
        print(f"{family:<12}{m['read_accuracy']:>15.1%}{m['most_common_value']:>20.1%}")
    print(f"model card: {out / 'README.md'}")
    return report


def generate(cfg: Config, problems_path: Path, out: Path) -> GenerateSummary:
    from mmc_ray.engines.factory import build_engine
    from mmc_ray.stages.generate import run_generate
    from mmc_ray.tasks.benchmark import load_problem_file

    problems = load_problem_file(problems_path, duplicate_ids=cfg.tasks.duplicate_ids)
    engine = build_engine(cfg.actor)
    return run_generate(problems, engine, cfg.generate, out, batch_size=cfg.actor.max_batch_size)


def search(cfg: Config, problems_path: Path, out: Path, local: bool = False) -> SearchSummary:
    from mmc_ray.stages.search import search_to_dir
    from mmc_ray.tasks.benchmark import load_problem_file

    problems = load_problem_file(problems_path, duplicate_ids=cfg.tasks.duplicate_ids)
    if local:
        from mmc_ray.engines.factory import build_engine
        from mmc_ray.workers.dispatch import LocalDispatcher

        dispatcher = LocalDispatcher(build_engine(cfg.actor), cfg.actor.batches_in_flight())
        summary = search_to_dir(problems, dispatcher, cfg.search, out)
    else:
        from mmc_ray.ray_runtime import init_ray
        from mmc_ray.workers.dispatch import RayDispatcher, RetryPolicy
        from mmc_ray.workers.group import create_worker_group
        from mmc_ray.workers.role_worker import PolicyWorker

        init_ray()
        group = create_worker_group(PolicyWorker, cfg.actor)
        try:
            dispatcher = RayDispatcher.for_engines(group.workers, cfg.actor)
            summary = search_to_dir(problems, dispatcher, cfg.search, out,
                                    retry=RetryPolicy.for_role(cfg.actor.resources))
        finally:
            group.shutdown()
    print_search_summary(summary, out)
    return summary


def annotate(cfg: Config, trees: Path, out: Path, local: bool = False) -> dict[str, Any]:
    """Annotate; returns the dataset card's statistics."""
    from mmc_ray.stages.annotate import annotate_to_dir
    from mmc_ray.stages.dataset_card import card_stats

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
    return stats


def train(cfg: Config, data: Path, out: Path, resume: bool = False) -> TrainSummary:
    from mmc_ray.train.trainer import train as fit

    summary = fit(cfg, data, out, resume=resume)
    print_train_summary(summary)
    return summary


def print_train_summary(summary: TrainSummary) -> None:
    m, losses = summary.metrics, summary.losses
    marks = sorted({round(i * (len(losses) - 1) / 4) for i in range(5)}) if losses else []
    curve = " -> ".join(f"{losses[i]:.3f} (step {i + 1})" for i in marks)
    print(f"train: {m.get('step')} steps in {summary.seconds:.0f}s; loss {curve}; "
          f"per worker {m.get('tokens_per_s', 0):.0f} tokens/s, {m.get('samples_per_s', 0):.1f} samples/s, "
          f"data wait {m.get('data_wait_share', 0):.0%}, peak memory {m.get('peak_memory_mb', 0):.0f} MiB; "
          f"trainable {m.get('trainable_params')}/{m.get('total_params')} params; "
          f"{m.get('examples_skipped')} examples skipped, {m.get('images_resized')} images resized")
    print(f"checkpoint: {summary.checkpoint}\nexported model (HF format): {summary.exported}")
    if m.get("wandb_run_dir"):
        print(f"wandb run: {m['wandb_run_dir']} (offline runs upload with `wandb sync <dir>`)")


@contextmanager
def refine_engines(cfg: Config, local: bool = False) -> Iterator[tuple[Any, Any]]:
    """The actor and critic engines refinement runs on (Ray worker pools unless `local`), for one or
    more `refine` calls: each vLLM or HF engine start is paid once."""
    from mmc_ray.workers.pool import role_engine
    from mmc_ray.workers.role_worker import CriticWorker, PolicyWorker

    with role_engine(PolicyWorker, cfg.actor, local) as actor, \
            role_engine(CriticWorker, cfg.critic, local) as critic:
        yield actor, critic


def refine(cfg: Config, problems_path: Path, out: Path, local: bool = False,
           title: str = "refinement", engines: tuple[Any, Any] | None = None) -> Report:
    """Refine and evaluate (on `engines` from `refine_engines`, or on engines of its own); returns
    the evaluation `Report`."""
    from mmc_ray.refine.run import best_of_n_to_dir, refine_to_dir
    from mmc_ray.tasks.benchmark import load_problem_file

    problems = load_problem_file(problems_path, duplicate_ids=cfg.tasks.duplicate_ids)
    r = cfg.refine
    with nullcontext(engines) if engines is not None else refine_engines(cfg, local) as (actor, critic):
        if r.strategy != "best_of_n":
            summary = refine_to_dir(problems, actor, critic, r, records_dir(out))
            print(f"refine: {summary.problems} problems refined, {summary.resumed} already done; "
                  f"{summary.rows} rounds in {summary.seconds:.1f}s")
        if r.strategy != "refine":
            sampled = best_of_n_to_dir(problems, actor, critic, r, best_of_n_dir(out))
            print(f"best-of-n: {sampled.problems} problems sampled and verified, {sampled.resumed} already "
                  f"done; {sampled.rows} answers in {sampled.seconds:.1f}s")
        names = {"actor": actor.name, "critic": critic.name}
    return report(records_dir(out), report_dir(out), {
        "title": title, "problems": str(problems_path), **names,
        "critic model": engine_source(cfg.critic),
        "strategy": r.strategy, "max rounds": r.max_rounds, "temperatures": list(r.temperatures),
        "mitigations": f"reject_repeats={r.reject_repeats} (samples {r.revision_samples}), "
                       f"keep_best={r.keep_best}",
        **({"best-of-N": f"N = {', '.join(map(str, r.best_of_n))} at temperature {r.best_of_n_temperature}"}
           if r.strategy != "refine" else {}),
    }, best_of_n_dir(out) if r.strategy != "refine" else None, r.best_of_n)


def report(refine_dir: Path, out: Path, context: dict[str, Any], best_of_n: Path | None = None,
           sizes: tuple[int, ...] | None = None) -> Report:
    from mmc_ray.eval.report import pct, write_report

    written = write_report(refine_dir, out, context, best_of_n, sizes)
    if (m := written.refinement) is not None:
        c = m.critic
        by_round = " -> ".join(f"{a:.1%}" for a in m.accuracy_by_round)
        print(f"eval: {m.problems} problems; accuracy by round {by_round}; "
              f"final {m.final_accuracy:.1%} ({m.wrong_to_right} wrong->right, "
              f"{m.right_to_wrong} right->wrong)")
        print(f"critic: verdict accuracy {c.verdict_accuracy or 0:.1%}, parsed {c.parse_rate or 0:.1%}, "
              f"ProcessBench F1 {pct(c.processbench_f1)}, first-wrong-step F1 {pct(c.step_f1)}")
    if (b := written.best_of_n) is not None:
        pairs = ", ".join(f"N={n} {pct(a)} (vote {pct(v)})"
                          for n, a, v in zip(b.n, b.best_of_n_p_correct, b.majority_vote, strict=True))
        print(f"best-of-n: {b.problems} problems; by the critic's P(correct) {pairs}; "
              f"any sample correct at N={b.n[-1]}: {pct(b.any_correct[-1])}")
    extra = ", ".join(p.name for p in (written.json, written.plot) if p is not None)
    print(f"report: {written.markdown} (+ {extra})")
    return written


def print_search_summary(summary, out: Path) -> None:
    import pyarrow.parquet as pq

    columns = ["terminal_correct", "terminal_wrong", "root_value"]
    from mmc_ray.store.shards import verified_shards

    shards = verified_shards(tree_shards(out))
    rows = [r for p in shards for r in pq.read_table(p, columns=columns).to_pylist()]
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


def print_generate_summaries(summaries: Sequence) -> None:
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


def eval_critic(cfg: Config, bench: Path, out: Path, limit: int | None = None) -> CriticBenchRun:
    """Score `cfg.critic` on a step-labelled benchmark (stages/critic_bench.py); prints the figures."""
    from mmc_ray.engine_protocol import Closable
    from mmc_ray.engines.factory import build_engine
    from mmc_ray.eval.report import pct
    from mmc_ray.stages.critic_bench import judge, load_step_bench, write_critic_bench

    load = load_step_bench(bench)
    solutions = load.solutions[:limit] if limit else load.solutions
    if not solutions:
        raise BadInput(f"--bench {bench}: no usable solution ({len(load.skipped)} rows skipped)")
    critic = build_engine(cfg.critic)
    try:
        rows = judge(solutions, critic, cfg.refine.critic_max_new_tokens)
    finally:
        if isinstance(critic, Closable):
            critic.close()
    run = write_critic_bench(rows, load, out, {"bench": str(bench), "critic": cfg.critic.kind,
                                               "model": cfg.critic.model_path})
    report = run.report
    pb, crit = report.processbench, report.step_macro_f1_from_critiques
    scores = report.step_macro_f1_from_scores
    print(f"eval-critic: {report.solutions} solutions judged ({run.skipped} rows skipped, "
          f"{len(run.engine_errors)} left out for engine errors), critiques parsed "
          f"{pct(report.parse_rate)}, verdict accuracy {pct(report.verdict_accuracy)}")
    print(f"ProcessBench F1 {pct(pb.overall.f1)} (erroneous: exact first wrong step "
          f"{pct(pb.overall.acc_err)}; correct: judged correct {pct(pb.overall.acc_cor)}); mean over sources "
          f"{pct(pb.mean_group_f1)}")
    print(f"step macro-F1 from critiques {pct(crit.overall.macro_f1)}; from step scores "
          f"{pct(scores.overall.macro_f1) if scores else 'n/a (the critic gave none)'}")
    for source, figures in pb.groups.items():
        print(f"  {source}: ProcessBench F1 {pct(figures.f1)}, step macro-F1 "
              f"{pct(crit.groups[source].macro_f1)} ({figures.erroneous + figures.correct} solutions)")
    print(f"report: {out / 'report.json'} (+ judged.jsonl)")
    return run
