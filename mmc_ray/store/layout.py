"""Every folder and shard name on disk, in one place: what each stage writes, and where the
pipeline's run folder keeps it. Stages and readers take paths from here, never spell them.

    trees folder      trees-NNNNN.parquet                             mmc-ray search
    dataset folder    data/{train,validation,test}-NNNNN.parquet,     mmc-ray annotate
                      drops/drops-NNNNN.parquet, README.md
    refine folder     records/refine-NNNNN.parquet, report/          mmc-ray refine
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
REPORT = "report"
ACTOR_SFT_FILE = "actor-sft.parquet"
EXPORT = "hf"


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


def report_dir(refine_dir: str | Path) -> Path:
    return Path(refine_dir) / REPORT


def refine_shards(records: str | Path) -> list[Path]:
    return shard_paths(records, REFINE)


def export_dir(model_dir: str | Path) -> Path:
    """The HF-format export inside a trained model's folder."""
    return Path(model_dir) / EXPORT


@dataclass(frozen=True)
class RoundLayout:
    root: Path

    @property
    def problems(self) -> Path:
        return self.root / "problems.parquet"

    @property
    def trees(self) -> Path:
        return self.root / TREES

    @property
    def critic(self) -> Path:
        return self.root / "critic"

    @property
    def actor_data(self) -> Path:
        return self.root / "actor-sft"

    @property
    def actor(self) -> Path:
        return self.root / "actor"

    @property
    def refine(self) -> Path:
        return self.root / "refine"

    @property
    def refine_train(self) -> Path:
        return self.root / "refine-train"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def eval_problems(self) -> Path:
        return self.root / "eval-problems.parquet"

    @property
    def dataset(self) -> Path:
        return self.root / "mmc-dataset"

    @property
    def oracle_refine(self) -> Path:
        return self.root / "refine-oracle"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    def round(self, index: int) -> RoundLayout:
        return RoundLayout(self.root / f"round-{index}")
