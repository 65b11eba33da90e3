"""Optional engine abilities are named protocols, and each engine has exactly the ones it implements:
the critic service scores only with a `ScoresContinuations` engine, a worker reloads in place only
a `ReloadsInPlace` one, and pools close what is `Closable`."""

import pytest

from mmc_ray.config.engine_kinds import engine_kind
from mmc_ray.engine_protocol import Closable, ReloadsInPlace, ScoresContinuations, ScoresSteps
from mmc_ray.engines.hf import HFEngine
from mmc_ray.engines.openai import OpenAIEngine
from mmc_ray.engines.rule_critic import RuleCriticEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.engines.vllm import VLLMEngine


@pytest.mark.parametrize(("engine", "abilities"), [
    (HFEngine, {ScoresContinuations}),
    (VLLMEngine, {ReloadsInPlace, Closable}),
    (OpenAIEngine, {Closable, ScoresSteps}),
    (SimulatedActorEngine, set()),
    (RuleCriticEngine, set()),
])
def test_each_engine_has_the_abilities_it_implements(engine, abilities):
    assert {p for p in (ScoresContinuations, ScoresSteps, ReloadsInPlace, Closable)
            if issubclass(engine, p)} == abilities
    kind = {HFEngine: "hf", VLLMEngine: "vllm", OpenAIEngine: "openai", SimulatedActorEngine: "simulated",
            RuleCriticEngine: "rule"}[engine]
    # what a worker pool relies on: it knows before any worker builds its engine
    assert engine_kind(kind).scores_continuations == (ScoresContinuations in abilities)
