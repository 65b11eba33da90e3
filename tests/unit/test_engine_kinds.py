"""Engine kinds are known in one place (`config/engine_kinds.py`): nothing else compares a kind's name,
and the registry, the config's type and the engines agree."""

import ast
import importlib
from pathlib import Path
from typing import get_args

import pytest

from mmc_ray.config import EngineConfig, OpenAIConfig
from mmc_ray.config.engine_kinds import ENGINE_KINDS, EngineKind, engine_kind
from mmc_ray.engine_protocol import ScoresContinuations
from mmc_ray.engines.factory import build_engine, engine_constructor, engine_source

PACKAGE = Path(__file__).resolve().parents[2] / "mmc_ray"
REGISTRY = PACKAGE / "config" / "engine_kinds.py"


def _names(node: ast.AST) -> set[str]:
    """The string constants of a comparison operand (a literal, or a tuple/list/set of them)."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}


def kind_comparisons(source: str) -> list[int]:
    """Lines where `<something>.kind` is compared with an engine kind's name."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            on_kind = any(isinstance(o, ast.Attribute) and o.attr == "kind" for o in operands)
            if on_kind and any(_names(o) & set(ENGINE_KINDS) for o in operands):
                lines.append(node.lineno)
    return lines


def test_no_module_but_the_registry_compares_engine_kinds():
    found = {str(path.relative_to(PACKAGE.parent)): lines for path in sorted(PACKAGE.rglob("*.py"))
             if path != REGISTRY and (lines := kind_comparisons(path.read_text()))}
    assert not found, f"ask config.engine_kinds what a kind can do instead: {found}"


def test_the_check_sees_the_comparisons_it_forbids():
    assert kind_comparisons('if cfg.kind == "vllm": pass\nx = cfg.actor.kind in ("hf", "vllm")') == [1, 2]
    assert kind_comparisons('if pair.kind == "divergent": pass\nif request.kind == "expand": pass') == []


def test_the_registry_the_config_type_and_the_engines_agree():
    assert set(ENGINE_KINDS) == set(get_args(EngineKind))
    for spec in ENGINE_KINDS.values():
        if spec.needs is not None and importlib.util.find_spec(spec.needs.module) is None:
            continue  # vLLM: checked in its tier
        assert callable(engine_constructor(spec.name)), spec


@pytest.mark.parametrize("kind", ["simulated", "rule", "blind"])
def test_engines_without_a_model_build_from_their_kind(kind):
    engine = build_engine(EngineConfig(kind=kind))
    assert isinstance(engine, ScoresContinuations) == engine_kind(kind).scores_continuations


def test_the_source_of_an_engine_names_its_model_server_or_kind():
    assert engine_source(EngineConfig(kind="hf", model_path="/m")) == "/m"
    served = EngineConfig(kind="openai", openai=OpenAIConfig(base_url="http://127.0.0.1:1/v1"))
    assert engine_source(served) == "http://127.0.0.1:1/v1"
    assert engine_source(EngineConfig(kind="blind")) == "blind"
    with pytest.raises(ValueError, match="unknown engine kind 'x'"):
        engine_kind("x")
