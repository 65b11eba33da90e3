"""The staged recipe that teaches the tiny Qwen2-VL to read its images (`mmc-ray model pretrain-tiny`).

Real VLMs are built in stages; so is this one, from data the task renderers make exactly and for free:
  a. vision tower + projector, on a direct objective: a `FactReader` head reads every fact of an
     image (counts per colour and shape, bar values, box digits, side lengths), with
     `pretrain.vision_cues` also the cues bar values are composed of (a bar's gridline and label by
     position, the axis step), from the projector's visual tokens; the language model stays frozen;
  b. projector + language model, on dense descriptions of every image (every fact, in the solution
     steps' own sentences), the vision tower frozen;
  c. the same parts, on reference solutions with descriptions mixed in, so the base answers problems
     without forgetting how to say what it sees.
In b and c one attention head is guided to where each value it says is drawn (`attention_guide.py`):
without it the language model learns to find a named box's tokens slowly (bench/RESULTS.md).
Held-out fresh problems measure each stage: the reader's fact accuracy after (a), teacher-forced
`read_accuracy` of the observed values in reference solutions after (b) and (c). The result is a
normal Hugging Face folder with a model card (the recipe, its seeds, its figures, every file's sha256).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from mmc_ray.config import PretrainConfig, TrainConfig
from mmc_ray.models.loading import LoadedVLM, load_vlm
from mmc_ray.models.tiny import build_tiny_vlm
from mmc_ray.store.shards import file_sha256
from mmc_ray.tasks.descriptions import described_facts
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.synthetic import (
    DEFAULT_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    Cues,
    Facts,
    Regions,
    generate_problem,
    problem_keys,
    problem_scene,
)
from mmc_ray.train.attention_guide import Box, GuideSettings, example_targets
from mmc_ray.train.examples import ExampleBuilder, TrainExample
from mmc_ray.train.fact_reader import FactReader, FactVocabulary, fact_accuracy, fit_vision
from mmc_ray.train.local_fit import fit_in_process
from mmc_ray.train.perception import (
    computes_a_number,
    most_common_values,
    observed_value_tokens,
    read_accuracy,
    span_tokens,
)

CARD = "README.md"
DRILL_PROMPT = "Work out each line."
REPORT = "pretrain_report.json"
Log = Callable[[str], None]
Scene = tuple[Problem, Facts]


def pretrain_tiny(cfg: PretrainConfig, out_dir: str | Path, log: Log = print) -> dict[str, Any]:
    """Run the recipe and write the model folder to `out_dir` (atomically); the report (figures,
    curves, times) is also saved in the folder and summed up in its card."""
    import torch

    out_dir = Path(out_dir)
    work = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    scenes, regions, cues = draw_scenes(cfg, log)
    train, held_out = scenes[:cfg.scenes], scenes[cfg.scenes:]
    if cfg.start_from:  # stages a-c were run: their model, report and figures carry over
        shutil.copytree(cfg.start_from, work)
        report = json.loads((work / REPORT).read_text())
        # the config of stages a-c: that run's own, or the one it had continued from
        earlier = report.get("continued", {}).get("config") or report["config"]
        report.update(config=dataclasses.asdict(cfg), continued={"from": cfg.start_from, "config": earlier})
    else:
        build_tiny_vlm(cfg.model, work, max_pixels=cfg.image_px ** 2)
        report = {"config": dataclasses.asdict(cfg), "stages": {}}
    vlm = load_vlm(work, device="cpu", dtype="float32", max_pixels=cfg.image_px ** 2)
    report["params"] = sum(p.numel() for p in vlm.model.parameters())
    builder = ExampleBuilder(vlm, cfg.tokens_per_step)
    language = train[:cfg.language_scenes]
    guide = Guidance(vlm, regions)
    solved = [guide.solution(problem, ex) for problem, _ in language
              if (ex := builder.actor_sft(problem.to_row())) is not None]
    probe = [(p, ex) for p, _ in held_out if (ex := builder.actor_sft(p.to_row())) is not None]
    common = most_common_values([p for p, _ in train])
    described = _descriptions(builder, language, cfg.seed, guide)
    mixed = solved + described[: len(solved) // 2]  # solving, and still saying what it sees
    if not cfg.start_from:
        read_in_a = [(p, facts + cues[p.problem_id]) for p, facts in train] if cfg.vision_cues else train
        report["stages"]["a_vision"] = _stage_vision(vlm, cfg, read_in_a, held_out, log)
        report["stages"]["b_describe"] = _stage_language(vlm, cfg, "b: descriptions", described,
                                                         cfg.describe_steps, probe, common, log)
        report["stages"]["c_solve"] = _stage_language(vlm, cfg, "c: reference solutions", mixed,
                                                      cfg.solve_steps, probe, common, log)
    if cfg.drill_steps:
        drill = drill_examples(builder, cfg, log)
        share = round(len(mixed) * cfg.drill_share / (1 - cfg.drill_share))
        report["stages"]["d_drill"] = _stage_language(vlm, cfg, "d: arithmetic drill", mixed + drill[:share],
                                                      cfg.drill_steps, probe, common, log,
                                                      learning_rate=cfg.drill_learning_rate)
    report["perception"] = report["stages"][list(report["stages"])[-1]]["read"]
    report["seconds"] = report.get("seconds", 0.0) + round(time.perf_counter() - started, 1)  # a-c's too
    report["torch_threads"] = torch.get_num_threads()
    _save(vlm, work, report)
    shutil.rmtree(out_dir, ignore_errors=True)
    work.rename(out_dir)
    log(f"saved {out_dir} ({report['seconds']:.0f} s)")
    return report


def draw_scenes(cfg: PretrainConfig, log: Log) -> tuple[list[Scene], dict[str, dict[str, tuple[Box, ...]]],
                                                        dict[str, Cues]]:
    """The training problems then the held-out ones, with their facts, rendered on every core; and
    by problem id, where each problem's facts are drawn and the cues its values are composed of."""
    keys = list(problem_keys(cfg.scenes + cfg.held_out, cfg.data_seed, cfg.families, cfg.difficulties))
    log(f"drawing {cfg.scenes} + {cfg.held_out} problems with their facts (seed {cfg.data_seed})")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        drawn = list(pool.map(_scene, keys, chunksize=64))
    log(f"  drawn in {time.perf_counter() - started:.0f} s")
    return ([(p, facts) for p, facts, _, _ in drawn],
            {p.problem_id: dict(regions) for p, _, regions, _ in drawn},
            {p.problem_id: cues for p, _, _, cues in drawn})


def _scene(key: tuple[str, int, int]) -> tuple[Problem, Facts, Regions, Cues]:
    return problem_scene(*key, image_size=DEFAULT_IMAGE_SIZE)


def _stage_vision(vlm: LoadedVLM, cfg: PretrainConfig, train: Sequence[Scene], held_out: Sequence[Scene],
                  log: Log) -> dict[str, Any]:
    vocab = FactVocabulary.of(train)
    curve: list[dict[str, Any]] = []
    progress = _Progress("a: vision tower on facts", cfg.vision_steps, log)

    def after_step(losses: list[float], reader: FactReader) -> None:
        progress.step(losses)
        if progress.checkpoint(len(losses)):
            curve.append({"step": len(losses), "loss": _recent(losses),
                          "fact_accuracy": fact_accuracy(vlm, reader, held_out, vocab)})
            log(f"  held-out facts read: {_by_family(curve[-1]['fact_accuracy'])}")

    fitted = fit_vision(vlm, train, vocab, steps=cfg.vision_steps, batch_size=cfg.vision_batch,
                        learning_rate=cfg.vision_learning_rate, seed=cfg.seed, after_step=after_step)
    return {"steps": cfg.vision_steps, "trainable_params": fitted.trainable_params,
            "seconds": progress.seconds(), **progress.loss_ends(), "curve": curve,
            "fact_slots": len(vocab.slots), "fact_values": len(vocab.values)}


def _descriptions(builder: ExampleBuilder, scenes: Sequence[Scene], seed: int,
                  guide: Guidance) -> list[TrainExample]:
    rng = random.Random(seed)
    examples = []
    for problem, facts in scenes:
        lines = described_facts(problem, facts, rng)
        text = "\n".join(line for _, _, line in lines)
        if (ex := builder.description(problem, text)) is not None:
            examples.append(guide.description(problem, dict(facts), lines, text, ex))
    return examples


DRILL_LINES = 12  # computation lines to a drill example


def drill_examples(builder: ExampleBuilder, cfg: PretrainConfig, log: Log) -> list[TrainExample]:
    """The arithmetic drill: the computation lines ("Add them: 25 + 22 = 47.") of fresh problems'
    reference solutions (seed `data_seed` + 10: no training, held-out or probe problem), shuffled, 12 to
    a text-only example. The base reads the box digits but computes few of their sums right: the
    reference solutions hold too few computations to learn the arithmetic from (bench/RESULTS.md)."""
    keys = list(problem_keys(cfg.drill_problems, cfg.data_seed + 10, cfg.families, cfg.difficulties))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        lines = [line for chunk in pool.map(_computation_lines, keys, chunksize=64) for line in chunk]
    random.Random(cfg.seed).shuffle(lines)
    examples = [ex for i in range(0, len(lines) - DRILL_LINES + 1, DRILL_LINES)
                if (ex := builder.text(f"drill-{i}", DRILL_PROMPT, "\n".join(lines[i:i + DRILL_LINES])))
                is not None]
    log(f"  drill: {len(lines)} computation lines of {cfg.drill_problems} problems → {len(examples)} "
        "examples")
    return examples


def _computation_lines(key: tuple[str, int, int]) -> list[str]:
    """The steps of a problem's reference solution that compute a number, without "Step k: "."""
    problem = generate_problem(*key, image_size=MIN_IMAGE_SIZE)
    return [line.split(": ", 1)[1]
            for step, line in zip(problem.steps, problem.reference_solution.split("\n"), strict=False)
            if computes_a_number(step)]


class Guidance:
    """Attention targets of the recipe's examples: each observed value → the visual tokens covering
    its fact's drawn region (`attention_guide.py`)."""

    def __init__(self, vlm: LoadedVLM, regions: dict[str, dict[str, tuple[Box, ...]]]) -> None:
        self.vlm, self.regions = vlm, regions

    def description(self, problem: Problem, facts: dict[str, str], lines: Sequence[tuple[str, int, str]],
                    text: str, example: TrainExample) -> TrainExample:
        """`text`: the `lines` joined by newlines, the reply of `example`."""
        spans, at = [], 0
        for name, value_at, line in lines:
            spans.append((name, (at + value_at, at + value_at + len(facts[name]))))
            at += len(line) + 1
        positions = span_tokens(example, text, [span for _, span in spans], self.vlm.tokenizer)
        return self._targeted(problem, example, [name for name, _ in spans], positions)

    def solution(self, problem: Problem, example: TrainExample) -> TrainExample:
        observed = observed_value_tokens(problem, example, self.vlm.tokenizer)
        return self._targeted(problem, example, [step.label for step, _ in observed],
                              [positions for _, positions in observed])

    def _targeted(self, problem: Problem, example: TrainExample, names: Sequence[str],
                  positions: Sequence[list[int]]) -> TrainExample:
        drawn = self.regions[problem.problem_id]
        values = [(p, drawn.get(name, ())) for name, p in zip(names, positions, strict=True)]
        targets = example_targets(example.input_ids, self.vlm.image_token_id, example.image_grid_thw[0],
                                  self.vlm.merge_size, values)
        return dataclasses.replace(example, attention_targets=targets)


def _stage_language(vlm: LoadedVLM, cfg: PretrainConfig, name: str, examples: list[TrainExample], steps: int,
                    probe: Sequence[tuple[Problem, TrainExample]], common: dict[tuple[str, str], str],
                    log: Log, learning_rate: float | None = None) -> dict[str, Any]:
    train_cfg = TrainConfig(learning_rate=learning_rate or cfg.learning_rate, max_steps=max(steps, 1),
                            warmup_steps=max(steps // 20, 1), tokens_per_step=cfg.tokens_per_step,
                            max_seq_len=cfg.tokens_per_step,
                            freeze=("vision",), max_pixels=cfg.image_px ** 2, seed=cfg.seed)
    curve: list[dict[str, Any]] = []
    progress = _Progress(name, steps, log)

    def after_step(losses: list[float]) -> None:
        progress.step(losses)
        if progress.checkpoint(len(losses)):
            curve.append({"step": len(losses), "loss": _recent(losses),
                          "read": read_accuracy(vlm, probe, common)})
            read = curve[-1]["read"]
            computed = {f: m["compute_accuracy"] for f, m in read.items()
                        if m["compute_accuracy"] is not None}
            values = {f: m["read_accuracy"] for f, m in read.items()}
            log(f"  held-out values read (teacher-forced): {_by_family(values)}; "
                f"computed: {_by_family(computed)}")

    guide = GuideSettings(cfg.guide_layer, cfg.guide_head, cfg.guide_weight) if cfg.guide_weight else None
    if steps:
        fit_in_process(vlm, examples, train_cfg, random.Random(cfg.seed), after_step=after_step, guide=guide)
    read = curve[-1]["read"] if curve else read_accuracy(vlm, probe, common)
    return {"steps": steps, "examples": len(examples),
            "guided_values": sum(len(ex.attention_targets) for ex in examples) if guide else 0,
            "seconds": progress.seconds(), **progress.loss_ends(), "curve": curve, "read": read}


class _Progress:
    """One line every ~5% of a stage: step, recent loss, elapsed and remaining time."""

    def __init__(self, name: str, total: int, log: Log, evaluations: int = 4) -> None:
        self.name, self.total, self.log = name, total, log
        self.every = max(total // 20, 1)
        self.evaluate_every = max(-(-total // evaluations), 1)
        self.started = time.perf_counter()
        self.losses: list[float] = []
        log(f"stage {name}: {total} steps")

    def step(self, losses: list[float]) -> None:
        self.losses = losses
        done = len(losses)
        if done % self.every == 0 or done == self.total:
            elapsed = self.seconds()
            left = elapsed / done * (self.total - done)
            self.log(f"  {self.name} {done}/{self.total}: loss {_recent(losses):.3f}, "
                     f"{elapsed:.0f} s, ~{left:.0f} s left")

    def checkpoint(self, done: int) -> bool:
        return done % self.evaluate_every == 0 or done == self.total

    def loss_ends(self, window: int = 10) -> dict[str, float]:
        """The mean loss of the stage's first and last `window` steps."""
        if not self.losses:
            return {}
        head = self.losses[:window]
        return {"loss_first": sum(head) / len(head), "loss_last": _recent(self.losses, window)}

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def _recent(losses: list[float], window: int = 50) -> float:
    tail = losses[-window:]
    return sum(tail) / len(tail)


def _by_family(figures: dict[str, float]) -> str:
    return ", ".join(f"{family} {value:.1%}" for family, value in figures.items())


def _save(vlm: LoadedVLM, folder: Path, report: dict[str, Any]) -> None:
    """The trained weights over the built folder's, then the report and the card with every file's hash."""
    vlm.model.save_pretrained(folder)
    (folder / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    (folder / CARD).write_text(model_card(report, file_hashes(folder)))


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of the model folder but its card."""
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CARD}


def card_hashes(card: str) -> dict[str, str]:
    """The file → sha256 table `model_card` writes, read back."""
    rows = (line.split("|") for line in card.splitlines() if line.startswith("| `"))
    return {cells[1].strip().strip("`"): cells[2].strip().strip("`") for cells in rows}


def _overrides(cfg: dict[str, Any], **changed: Any) -> str:
    cfg = {**cfg, **changed}
    return " ".join([*(f"pretrain.model.{k}={v}" for k, v in cfg["model"].items()),
                     *(f"pretrain.{k}={_cli_value(v)}" for k, v in cfg.items() if k != "model")])


def model_card(report: dict[str, Any], hashes: dict[str, str]) -> str:
    cfg = report["config"]
    continued = report.get("continued")
    if continued:  # stages a-c by the recipe of their own card, then stage d from that model
        earlier = {**cfg, **continued["config"], "start_from": "", "drill_steps": 0}
        commands = [f"mmc-ray model pretrain-tiny --out A {_overrides(earlier)}",
                    f"mmc-ray model pretrain-tiny --out DIR {_overrides(cfg, start_from='A')}"]
    else:
        commands = [f"mmc-ray model pretrain-tiny --out DIR {_overrides(cfg)}"]
    read = report["perception"]
    vision = report["stages"]["a_vision"]["curve"]
    facts_read = vision[-1]["fact_accuracy"] if vision else {}
    drill = (f"; (d) the same mix with an arithmetic drill added (the computation "
             f"lines of {cfg['drill_problems']} fresh problems, text only, {cfg['drill_share']:.0%} of the "
             f"examples), {cfg['drill_steps']} steps" if cfg.get("drill_steps") else "")
    lines = [
        "# tiny-seeing-qwen2-vl",
        "",
        f"A {report['params'] / 1e6:.1f} M-parameter Qwen2-VL taught to read its synthetic images by "
        "mmc-ray's staged recipe (issue #36) from data the task renderers make exactly. It is the base "
        "the demo's critic, the benchmarks and the tests that need a model that sees start from; "
        "`mmc-ray model build-tiny` still builds the random-weight model.",
        "",
        "## Recipe",
        *(["Stages a-c, then stage d continued from their model (`A`):"] if continued else []),
        "```",
        *commands,
        "```",
        f"Images at most {cfg['image_px']} px a side.",
        f"Data: {cfg['scenes']} synthetic problems from seed {cfg['data_seed']} (families "
        f"{', '.join(cfg['families'])}; difficulties {cfg['difficulties']}), the next {cfg['held_out']} "
        f"held out; weights, data order and description order from seed {cfg['seed']}.",
        f"Stages: (a) vision tower + projector on every fact of an image"
        f"{' and the cues its values are composed of' if cfg.get('vision_cues') else ''}, "
        f"{cfg['vision_steps']} steps; "
        f"(b) projector + language model on dense descriptions, {cfg['describe_steps']} steps; (c) the same "
        f"on reference solutions with descriptions mixed in, {cfg['solve_steps']} steps{drill}. Took "
        f"{report['seconds'] / 60:.0f} min on {report['torch_threads']} CPU threads.",
        "",
        "## Perception (held-out fresh problems)",
        "Observed values read right, teacher-forced on reference solutions (`read_accuracy`), beside "
        "always answering the family's most common value; after stage (a), the share of each image's "
        "facts its reader head gets right; and the values the solutions compute from them, teacher-forced "
        "the same way. The target is 90% read in every family (issue #36).",
        "",
        "| family | read_accuracy | most common value | values | stage (a) facts read | computed right |",
        "|---|---|---|---|---|---|",
        *(f"| {family} | {m['read_accuracy']:.1%} | {m['most_common_value']:.1%} | {m['values']} | "
          f"{_pct(facts_read.get(family))} | {_pct(m.get('compute_accuracy'))} |"
          for family, m in read.items()),
        "",
        f"Learning curves: `{REPORT}`.",
        "",
        "## Files",
        "| file | sha256 |",
        "|---|---|",
        *(f"| `{name}` | `{digest}` |" for name, digest in hashes.items()),
        "",
    ]
    return "\n".join(lines)


def _cli_value(value: Any) -> str:
    """A config value as a dotted override reads it back (YAML: lists in brackets)."""
    return f"[{','.join(map(str, value))}]" if isinstance(value, list | tuple) else str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"
