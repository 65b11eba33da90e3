"""`BlindCriticEngine`: a critic that judges nothing. Every answer is "incorrect" from step 1, so the
actor revises every answer until the round budget is spent. Refinement with it is the baseline a
trained critic must beat: whatever it gains comes from revising at all, not from judgement."""

from __future__ import annotations

from collections.abc import Sequence

from mmc_ray.config import EngineConfig
from mmc_ray.critique.schema import Critique
from mmc_ray.engine_protocol import Completion, GenerationRequest, GenerationResult
from mmc_ray.engines.simulated import approx_tokens

BLIND_CRITIQUE = Critique("incorrect", "Blind baseline: every answer is sent back for revision.", 1, "other",
                          "Check every step again from the first.")


class BlindCriticEngine:
    name = "blind-critic"

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> BlindCriticEngine:
        return cls()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        text = BLIND_CRITIQUE.to_text()
        completion = Completion(text, "stop", approx_tokens(text))
        return [GenerationResult((completion,) * req.n, 0) for req in requests]
