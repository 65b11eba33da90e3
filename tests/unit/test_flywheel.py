"""The pipeline's per-round helpers that need no Ray: a model already exported is not trained
again, and its recorded figures still reach the report."""

import json

import pytest

from mmc_ray.config import Config, load_config
from mmc_ray.orchestration import commands, flywheel
from mmc_ray.store.layout import adapter_dir, export_dir, fit_figures_file

ADAPTER_ROUNDS = ("train.lora.enabled=true", "train.lora.merged=false", "critic.kind=hf")


@pytest.fixture
def no_training(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(commands, "train", never)


def test_an_exported_model_is_not_trained_again_and_keeps_its_figures(tmp_path, no_training, capsys):
    out = tmp_path / "actor"
    export_dir(out).mkdir(parents=True)
    (export_dir(out) / "config.json").write_text("{}")
    fit_figures_file(out).write_text(json.dumps({"steps": 3, "final_loss": 0.5, "seconds": 9.0}))
    assert flywheel._train_once(Config(), tmp_path / "data", out, model="actor") == {
        "steps": 3, "final_loss": 0.5, "seconds": 9.0}
    assert f"train: actor already exported at {export_dir(out)}" in capsys.readouterr().out
    fit_figures_file(out).unlink()  # exported by an older version: no figures, still not retrained
    assert flywheel._train_once(Config(), tmp_path / "data", out) == {}


def test_with_lora_and_no_merged_export_each_rounds_critic_is_its_adapter_on_the_first_base(tmp_path):
    cfg = load_config(None, ADAPTER_ROUNDS)
    assert flywheel.adapter_rounds(cfg) and not flywheel.adapter_rounds(Config())
    rcfg = flywheel._round_config(cfg, 2, "/models/base", tmp_path / "round-2" / "critic", "/models/actor")
    assert rcfg.critic.model_path == rcfg.train.init_model == "/models/base"
    assert rcfg.critic.adapters == (f"critic-r2={adapter_dir(tmp_path / 'round-2' / 'critic')}",)
    assert rcfg.critic.adapter == "critic-r2"
    full = flywheel._round_config(Config(), 2, "/models/r1", tmp_path / "critic", "/models/actor")
    assert full.critic.model_path == str(export_dir(tmp_path / "critic")) and not full.critic.adapters


def test_an_exported_adapter_is_not_trained_again(tmp_path, no_training, capsys):
    out = tmp_path / "critic"
    adapter_dir(out).mkdir(parents=True)
    (adapter_dir(out) / "adapter_config.json").write_text("{}")
    assert flywheel._train_once(load_config(None, ADAPTER_ROUNDS), tmp_path / "data", out) == {}
    assert f"train: critic already exported at {adapter_dir(out)}" in capsys.readouterr().out


@pytest.mark.parametrize(("overrides", "name"), [
    ({"kind": "simulated"}, "simulated actor"),
    ({"kind": "hf", "model_path": "/models/actor"}, "/models/actor"),
])
def test_the_report_names_the_actor_that_answered(overrides, name):
    import dataclasses

    cfg = Config()
    cfg = dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, **overrides))
    assert flywheel._actor_name(cfg) == name


def test_invocations_add_up(tmp_path):
    import time

    flywheel.record_invocation(tmp_path, time.time() - 5, "failed")
    flywheel.record_invocation(tmp_path, time.time() - 7, "finished")
    earlier = flywheel._earlier_invocations(flywheel.RunLayout.at(tmp_path))
    assert [e["outcome"] for e in earlier] == ["failed", "finished"]
    assert sum(e["seconds"] for e in earlier) == pytest.approx(12, abs=0.5)


def test_the_pipeline_report_has_a_best_of_n_table_when_rounds_measured_it():
    from mmc_ray.orchestration.flywheel import _best_of_n_lines

    b = {"n": [1, 2], "best_of_n_p_correct": [0.5, 0.75], "majority_vote": [0.5, 0.5], "any_correct": [0.5, 1.0]}
    summary = {"rounds": [{"round": 1, "best_of_n": b}, {"round": 2}], "oracle": {"kind": "rule", "best_of_n": b}}
    lines = _best_of_n_lines(summary)
    assert "| round 1 (trained) | 50.0% | 75.0% | 50.0% | 100.0% |" in lines
    assert "| oracle (rule) | 50.0% | 75.0% | 50.0% | 100.0% |" in lines and not any("round 2" in x for x in lines)
    assert _best_of_n_lines({"rounds": [{"round": 1}]}) == []
