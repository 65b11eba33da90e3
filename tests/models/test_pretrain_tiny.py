"""The recipe behind the shipped seeing base (`mmc-ray model pretrain-tiny`), on a short schedule: every
stage runs and learns (its loss falls), and the folder it writes is a loadable Hugging Face model whose
card's hash table matches its files. The full schedule's figures are in models/tiny-seeing/README.md."""

import dataclasses

import pytest

from mmc_ray.config import Config
from mmc_ray.models.loading import load_vlm
from mmc_ray.train.pretrain_tiny import CARD, card_hashes, file_hashes, pretrain_tiny

pytestmark = pytest.mark.slow


def test_the_recipe_runs_every_stage_and_learns(tmp_path):
    cfg = dataclasses.replace(Config().pretrain, scenes=160, language_scenes=160, held_out=12, vision_steps=80, vision_batch=16,
                              describe_steps=40, solve_steps=40, drill_steps=40, drill_problems=400,
                              tokens_per_step=1536)
    lines: list[str] = []
    report = pretrain_tiny(cfg, tmp_path / "seeing", log=lines.append)

    for stage in ("a_vision", "b_describe", "c_solve"):
        figures = report["stages"][stage]
        assert figures["loss_last"] < 0.7 * figures["loss_first"], (stage, figures["loss_first"],
                                                                    figures["loss_last"])
    drill = report["stages"]["d_drill"]  # continues a trained model: its loss starts lower
    assert drill["steps"] == 40 and drill["loss_last"] < drill["loss_first"], drill
    assert set(report["perception"]) == set(cfg.families)
    assert report["perception"]["arithmetic"]["computed"] > 0  # the arithmetic is measured too
    assert any("~" in line and "s left" in line for line in lines)  # progress while it runs

    folder = tmp_path / "seeing"
    assert card_hashes((folder / CARD).read_text()) == file_hashes(folder)
    vlm = load_vlm(folder, device="cpu", dtype="float32")
    assert vlm.image_processor.size["longest_edge"] == cfg.image_px ** 2
    assert not (tmp_path / ".seeing.tmp").exists()
