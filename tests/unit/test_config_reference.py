"""One source of truth for the defaults: the dataclasses. The default YAML and docs/configuration.md's table are
generated from them and must not go stale."""

import dataclasses

import yaml

from mmc_ray.config import Config, ConfigError, load_config
from mmc_ray.config.loading import _build
from mmc_ray.config.reference import (
    DEFAULT_CONFIG_PATH,
    REFERENCE_DOC_PATH,
    TABLE_END,
    TABLE_START,
    entries,
    reference_table,
    reference_yaml,
)

STALE = "stale: run `make config-docs` (python -m mmc_ray.config.reference) and commit the result"


def test_the_default_yaml_is_the_dataclasses_defaults_field_by_field():
    assert load_config() == Config()  # frozen dataclasses compare every field, nested sections too
    assert _build(Config, yaml.safe_load(reference_yaml())) == Config()


def test_the_default_yaml_is_generated_from_the_dataclasses():
    assert DEFAULT_CONFIG_PATH.read_text() == reference_yaml(), f"configs/tiny-cpu.yaml is {STALE}"


def test_the_reference_table_is_generated_from_the_dataclasses():
    doc = REFERENCE_DOC_PATH.read_text()
    block = doc[doc.index(TABLE_START) + len(TABLE_START):doc.index(TABLE_END)]
    assert block.strip() == reference_table().strip(), f"docs/configuration.md's table is {STALE}"


def test_every_key_has_help_and_every_key_is_in_the_table():
    table = reference_table()
    for entry in entries(Config()):
        assert entry.help.strip(), f"{entry.path} has no help string"
        role = entry.path.split(".", 1)[0]
        if role not in ("annotator", "critic"):
            assert f"`{entry.path}`" in table, entry.path


def test_role_sections_differ_from_the_actor_only_where_the_table_says():
    table = reference_table()
    row = next(line for line in table.splitlines() if line.startswith("| **`critic.*`**"))
    assert "`kind: hf`" in row and "`model_path: runs/critic/hf`" in row and "`resources.num_cpus: 0.5`" in row
    assert "replicas" not in row  # 2, as the actor's
    annotator = next(line for line in table.splitlines() if line.startswith("| **`annotator.*`**"))
    assert "`resources.replicas: 1`" in annotator and "model_path" not in annotator


def test_a_backend_key_one_level_too_high_names_where_it_lives():
    for override, where in (("actor.max_model_len=1", "actor.vllm.max_model_len"),
                            ("critic.base_url=http://x/v1", "critic.openai.base_url"),
                            ("actor.observe_error_rate=0.1", "actor.simulator.observe_error_rate")):
        try:
            load_config(overrides=[override])
        except ConfigError as e:
            assert f"it lives at {where}" in str(e)
        else:
            raise AssertionError(f"{override} was accepted")


def test_roles_get_their_own_section_instances():
    cfg = Config()
    assert cfg.actor.kind == "simulated" and cfg.critic.kind == "hf" and cfg.annotator.kind == "hf"
    assert cfg.actor.resources is not cfg.critic.resources
    assert dataclasses.replace(cfg.actor, kind="hf").vllm == cfg.actor.vllm
