"""Every folder and shard name on disk, in one place: what each stage writes, and where the
pipeline's run folder keeps it. Stages and readers take paths from here, never spell them.

    trees folder      trees-NNNNN.parquet                             mmc-ray search
    dataset folder    data/{train,validation,test}-NNNNN.parquet,     mmc-ray annotate
                      drops/drops-NNNNN.parquet, README.md
    refine folder     records/refine-NNNNN.parquet, report/,         mmc-ray refine
                      best-of-n/best-of-n-NNNNN.parquet               (refine.strategy best_of_n|both)
    actor data        actor-sft.parquet                               pipeline.retrain_actor
    a trained model   checkpoints and hf/ (the export)                mmc-ray train

`RunLayout` is the run folder of `mmc-ray pipeline` (see `orchestration.flywheel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmc_ray.store.shards import shard_paths

TREES = "trees"
DATA = "data"
SPLITS = ("train", "validation", "test")
DROPS = "drops"
RECORDS = "records"
REFINE = "refine"
BEST_OF_N = "best-of-n"
REPORT = "report"
ACTOR_SFT_FILE = "actor-sft.parquet"
EXPORT = "hf"
ADAPTER = "adapter"
FIT_FIGURES = "fit.json"  # a trained model's figures (steps, final loss, seconds), beside its export


def tree_shards(trees_dir: str | Path) -> list[Path]:
    return shard_paths(trees_dir, TREES)


def data_dir(dataset_dir: str | Path) -> Path:
    """The folder of a dataset's split shards."""
    return Path(dataset_dir) / DATA


def drops_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / DROPS


def split_shards(dataset_dir: str | Path, split: str) -> list[Path]:
    return shard_paths(data_dir(dataset_dir), split)


def records_dir(refine_dir: str | Path) -> Path:
    """Where `mmc-ray refine --out DIR` keeps its records (its report goes to `report_dir`)."""
    return Path(refine_dir) / RECORDS


def best_of_n_dir(refine_dir: str | Path) -> Path:
    """Where `mmc-ray refine --out DIR` keeps its best-of-N samples (refine.strategy best_of_n|both)."""
    return Path(refine_dir) / BEST_OF_N


def best_of_n_shards(folder: str | Path) -> list[Path]:
    return shard_paths(folder, BEST_OF_N)


def report_dir(refine_dir: str | Path) -> Path:
    return Path(refine_dir) / REPORT


def refine_shards(records: str | Path) -> list[Path]:
    return shard_paths(records, REFINE)


def export_dir(model_dir: str | Path) -> Path:
    """The HF-format export inside a trained model's folder."""
    return Path(model_dir) / EXPORT


def adapter_dir(model_dir: str | Path) -> Path:
    """The LoRA adapter export inside a trained model's folder (`train.lora`)."""
    return Path(model_dir) / ADAPTER


def fit_figures_file(model_dir: str | Path) -> Path:
    return Path(model_dir) / FIT_FIGURES


@dataclass(frozen=True)
class RoundLayout:
    """One round's folder of the pipeline's run folder."""

    root: Path
    problems: Path      # this round's new training problems
    trees: Path         # MCTS over them
    critic: Path        # the critic trained this round (its export inside)
    actor_data: Path    # pipeline.retrain_actor: the actor's correct paths
    actor: Path         # ... and the actor fine-tuned on them
    refine: Path        # the critic at work on the held-out problems
    refine_train: Path  # the critic at work on this round's training problems

    @classmethod
    def at(cls, root: Path) -> RoundLayout:
        return cls(root, root / "problems.parquet", root / TREES, root / "critic", root / "actor-sft",
                   root / "actor", root / "refine", root / "refine-train")


@dataclass(frozen=True)
class RunLayout:
    """The run folder of `mmc-ray pipeline`."""

    root: Path
    config: Path         # the resolved config of the run
    eval_problems: Path  # held-out problems, refined and evaluated every round
    dataset: Path        # the critic's data, growing every round
    oracle_refine: Path  # refinement with the rule (oracle) critic
    blind_refine: Path   # refinement with the blind critic (every answer sent back)
    report_json: Path
    report_md: Path
    invocations: Path    # one line per run of the command on this folder: when, how long, how it ended

    @classmethod
    def at(cls, root: Path) -> RunLayout:
        return cls(root, root / "config.yaml", root / "eval-problems.parquet", root / "mmc-dataset",
                   root / "refine-oracle", root / "refine-blind", root / "report.json", root / "report.md",
                   root / "invocations.jsonl")

    def round(self, index: int) -> RoundLayout:
        return RoundLayout.at(self.root / f"round-{index}")
