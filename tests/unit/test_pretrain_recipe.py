"""The pure parts of the recipe that teaches the tiny VLM to see: what its vision head is asked to read,
and the model card's hash table (tests/models/test_seeing_base.py checks the shipped files against it)."""

import dataclasses

import pytest

from mmc_ray.config import Config, ConfigError, PretrainConfig
from mmc_ray.tasks.synthetic import problem_keys, problem_with_facts
from mmc_ray.train.fact_reader import ABSENT, FactVocabulary
from mmc_ray.train.pretrain_tiny import card_hashes, model_card


def scenes_of(n: int, seed: int, families=None, difficulties=(1, 2, 3)):
    return [problem_with_facts(*key) for key in problem_keys(n, seed, families, difficulties)]


def test_every_fact_gets_a_query_and_absent_names_read_none():
    scenes = scenes_of(40, seed=3)
    vocab = FactVocabulary.of(scenes)
    for problem, facts in scenes:
        slots, values = vocab.targets(problem, facts)
        names = [vocab.slots[i] for i in slots]
        assert all(family == problem.family for family, _ in names)
        read = {name: vocab.values[v] for (_, name), v in zip(names, values, strict=True)}
        assert {n: v for n, v in read.items() if v != ABSENT} == dict(facts)
    # bar charts draw 3 to 6 bars: some names are absent from some images
    assert any(ABSENT in [vocab.values[v] for v in vocab.targets(p, f)[1]] for p, f in scenes
               if p.family == "bar_chart")


def test_a_value_never_seen_in_training_reads_as_absent_not_as_a_crash():
    scenes = scenes_of(8, seed=1, families=("arithmetic",))
    vocab = FactVocabulary.of(scenes[:1])
    problem, facts = scenes[1]
    _, values = vocab.targets(problem, facts)
    assert all(0 <= v < len(vocab.values) for v in values)


def fake_report(cfg: PretrainConfig) -> dict:
    read = {"counting": {"read_accuracy": 0.5, "most_common_value": 0.25, "values": 10}}
    return {"config": dataclasses.asdict(cfg), "params": 2_000_000, "seconds": 60.0, "torch_threads": 2,
            "perception": read, "stages": {"a_vision": {"curve": [{"fact_accuracy": {"counting": 0.7}}]}}}


def test_the_card_lists_every_file_hash_and_reads_back():
    hashes = {"model.safetensors": "ab" * 32, "config.json": "cd" * 32}
    card = model_card(fake_report(Config().pretrain), hashes)
    assert card_hashes(card) == hashes
    assert "| counting | 50.0% | 25.0% | 10 | 70.0% | – |" in card


def test_a_continued_recipe_card_gives_both_commands_and_they_rebuild_both_configs():
    """Stage d continued from a model of stages a-c: the card's first command makes that model (no
    drill), the second continues from it; each rebuilds its run's config."""
    from mmc_ray.config import load_config

    earlier = dataclasses.replace(Config().pretrain, scenes=123, language_scenes=100, drill_steps=0)
    later = dataclasses.replace(Config().pretrain, scenes=123, language_scenes=100, drill_steps=50,
                                start_from="models/tiny-seeing")
    report = {**fake_report(later), "continued": {"from": "models/tiny-seeing",
                                                   "config": dataclasses.asdict(earlier)}}
    report["perception"]["counting"].update(compute_accuracy=0.75, computed=4)
    card = model_card(report, {})
    first, second = [line.split()[5:] for line in card.splitlines() if line.startswith("mmc-ray model pretrain-tiny")]
    assert load_config(overrides=first).pretrain == earlier
    assert load_config(overrides=second).pretrain == dataclasses.replace(later, start_from="A")
    assert "(d) the same mix with an arithmetic drill added" in card
    assert "| counting | 50.0% | 25.0% | 10 | 70.0% | 75.0% |" in card


def test_the_cards_recipe_command_rebuilds_the_same_config():
    from mmc_ray.config import load_config

    cfg = dataclasses.replace(Config().pretrain, scenes=123, language_scenes=100, difficulties=(1, 2),
                              vision_steps=7)
    card = model_card(fake_report(cfg), {})
    command = next(line for line in card.splitlines() if line.startswith("mmc-ray model pretrain-tiny"))
    overrides = command.split()[5:]
    assert load_config(overrides=overrides).pretrain == cfg


def test_pretrain_config_keeps_head_dim_vllm_can_run():
    with pytest.raises(ConfigError, match="head_dim"):
        PretrainConfig(model=dataclasses.replace(Config().pretrain.model, num_heads=8))


@pytest.mark.parametrize("family", ["counting", "bar_chart", "arithmetic", "geometry"])
def test_every_steps_value_tokens_are_found_in_the_solution(family):
    """`step_value_tokens` points at the tokens spelling each step's value, observed and computed alike
    (what `read_accuracy` and `compute_accuracy` score), whatever tokens the value merges with."""
    from transformers import AutoTokenizer

    from mmc_ray.models.shipped import SEEING_BASE
    from mmc_ray.tasks.synthetic import generate_problems
    from mmc_ray.train.examples import IGNORE_INDEX, TrainExample
    from mmc_ray.train.perception import step_value_tokens

    tokenizer = AutoTokenizer.from_pretrained(SEEING_BASE)
    for problem in generate_problems(8, seed=5, families=(family,), difficulties=(1, 2, 3, 4)):
        target = tokenizer(problem.reference_solution + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        example = TrainExample(problem.problem_id, [7, 8, 9, *target], [IGNORE_INDEX] * 3 + target)
        found = step_value_tokens(problem, example, tokenizer)
        assert [step for step, _ in found] == list(problem.steps)
        for step, positions in found:
            assert positions and tokenizer.decode([example.input_ids[p] for p in positions]).strip() == step.value
