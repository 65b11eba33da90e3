"""Best-of-N with a critic that scores continuations: the tiny HF critic's own likelihoods give each
sample's P(correct) and step soundness, with no critique generated."""

from mmc_ray.config import RefineConfig, SimulatorConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.refine.verify import sample_and_verify
from mmc_ray.tasks.synthetic import generate_problems


class NoGenerate:
    """The tiny critic with `generate` refused: scoring must not write critiques."""

    def __init__(self, engine):
        self.name, self.score = engine.name, engine.score

    def generate(self, requests):
        raise AssertionError("a critic that scores continuations is not asked to generate")


def test_a_scoring_critic_gives_likelihood_scores_for_every_sample(hf_engine):
    cfg = RefineConfig(best_of_n=(1, 2), problems_per_batch=4)
    rows = sample_and_verify(list(generate_problems(3, seed=2)), SimulatedActorEngine(SimulatorConfig()),
                             NoGenerate(hf_engine), cfg)
    assert len(rows) == 6 and {r["scored_by"] for r in rows} == {"likelihood"}
    for r in rows:
        assert 0 <= r["p_correct"] <= 1 and len(r["step_sound"]) == max(1, r["num_steps"])
        # soundness can only fall along the path: a step is sound when the first wrong one is later
        assert all(a >= b - 1e-9 for a, b in zip(r["step_sound"], r["step_sound"][1:], strict=False))
        assert r["step_sound"][-1] >= r["p_correct"] - 1e-9
        assert r["critic_verdict"] in ("correct", "incorrect")
