"""A command checks what it needs before it starts Ray or any work, and names every problem at once."""

import importlib.util

import pytest

from mmc_ray import cli
from mmc_ray.config import Config, EngineConfig, OpenAIConfig, TrainConfig
from mmc_ray.orchestration import preflight


@pytest.fixture
def bare_dir(tmp_path, monkeypatch):
    """A working directory without the runs/ the default config points at."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_pipeline_without_its_model_stops_before_ray_with_the_one_cause(bare_dir, capsys, ray_starts):
    assert cli.main(["pipeline", "--out", str(bare_dir / "runs/p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmc-ray pipeline: error: no model at runs/tiny-vlm (train.init_model")
    assert "--tiny-model" in err and err.count("\n") == 1
    assert ray_starts == []  # nothing started; the run folder holds only its log
    assert [p.name for p in (bare_dir / "runs/p").iterdir()] == ["mmc-ray.log"]


def test_every_problem_is_named_at_once(bare_dir, capsys):
    code = cli.main(["pipeline", "--out", str(bare_dir / "p"), "actor.kind=hf", "actor.model_path=models/actor",
                     "annotate.method=llm", "annotator.kind=hf", "annotator.model_path=models/annotator"])
    assert code == 2
    err = capsys.readouterr().err
    assert "pipeline cannot start, 3 problems:" in err
    for named in ("train.init_model", "no model at models/actor (actor.model_path", "no model at models/annotator (annotator.model_path"):
        assert named in err


@pytest.mark.parametrize(("argv", "named"), [
    (["search", "--problems", "nope.parquet", "--out", "trees"], "--problems nope.parquet: not found"),
    (["generate", "--problems", "nope.jsonl", "--out", "gen"], "--problems nope.jsonl: not found"),
    (["annotate", "--trees", "no-trees", "--out", "data"], "--trees no-trees: not found"),
    (["refine", "--problems", "p.parquet", "--out", "r", "--critic-model", "no-critic"],
     "no model at no-critic (critic.model_path"),
])
def test_commands_check_their_inputs_and_engines_first(bare_dir, capsys, argv, named):
    (bare_dir / "p.parquet").write_bytes(b"")
    assert cli.main(argv) == 2
    assert named in capsys.readouterr().err


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    assert preflight.output_problems(tmp_path / "out") == [f"--out {tmp_path / 'out'}: a file is there, not a folder"]
    assert preflight.output_problems(tmp_path / "new" / "deeper") == []


def test_engine_checks_per_kind(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert preflight.engine_problems("actor", EngineConfig(kind="hf", model_path=str(tmp_path / "m"))) == []
    assert preflight.engine_problems("actor", EngineConfig(kind="simulated", model_path="nowhere")) == []
    assert preflight.engine_problems("critic", EngineConfig(kind="rule")) == []
    served = EngineConfig(kind="openai", openai=OpenAIConfig(base_url="http://127.0.0.1:8000/v1"))
    assert preflight.engine_problems("critic", served) == []
    if importlib.util.find_spec("vllm") is None:
        (problem,) = preflight.engine_problems("critic", EngineConfig(kind="vllm", model_path=str(tmp_path / "m")))
        assert "vLLM is not installed" in problem


def test_models_the_pipeline_builds_or_trains_are_not_required_to_exist_before_it(bare_dir):
    tiny = bare_dir / "p" / "tiny-vlm"
    # --tiny-model sets train.init_model to it; here the actor runs on it too
    cfg = Config(actor=EngineConfig(kind="hf", model_path=str(tiny)), train=TrainConfig(init_model=str(tiny)))
    assert preflight.pipeline_problems(cfg, bare_dir / "p", tiny_model=tiny) == []
    assert len(preflight.pipeline_problems(cfg, bare_dir / "p")) == 2  # without it: init_model and the actor's


def test_require_says_missing_only_when_every_problem_is_something_absent(tmp_path):
    from mmc_ray.errors import BadInput, MissingInput

    absent = preflight.input_problems([("--problems", tmp_path / "none.jsonl")])
    with pytest.raises(MissingInput, match=r"none\.jsonl: not found"):
        preflight.require(absent, "search")
    (tmp_path / "out").write_text("")
    with pytest.raises(BadInput, match="search cannot start, 2 problems") as raised:
        preflight.require(absent + preflight.output_problems(tmp_path / "out"), "search")
    assert not isinstance(raised.value, MissingInput)
    preflight.require([], "search")  # nothing to say
