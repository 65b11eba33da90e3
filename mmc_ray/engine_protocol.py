"""The one generation interface every role (actor, critic, annotator) and backend share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "error"]
# Logits divided by a temperature this small overflow into NaN probabilities, and vLLM 0.29 raises any
# temperature below 0.01 to 0.01 and samples: every engine decodes greedily below this one instead.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete.

    `messages` are chat messages; a content part `{"type": "image"}` stands for the next entry of
    `images` (PNG bytes). `assistant_prefix` is text the assistant has already written and the
    engine continues (MCTS expands a node by continuing its path). `adapter` names the LoRA adapter
    to answer with ("" the base model); None leaves it to the engine (its role's configured adapter).
    `metadata` is carried through untouched for tracing; real engines ignore it.
    """

    messages: tuple[Mapping[str, Any], ...]
    images: tuple[bytes, ...] = ()
    assistant_prefix: str = ""
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    adapter: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        placeholders = sum(
            1 for m in self.messages if not isinstance(m["content"], str)
            for part in m["content"] if part.get("type") == "image"
        )
        if placeholders != len(self.images):
            raise ValueError(f"{placeholders} image parts in messages but {len(self.images)} images")


@dataclass(frozen=True)
class Completion:
    """One sampled continuation. `logprobs` (when asked for) are the model's log-probabilities of
    the chosen tokens under its unmodified distribution."""

    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: tuple[float, ...] | None = None
    error: str = ""  # why, when finish_reason == "error" (e.g. an undecodable image)


@dataclass(frozen=True)
class GenerationResult:
    """The `n` completions of one request, in order."""

    completions: tuple[Completion, ...]
    prompt_tokens: int


def error_result(n: int, reason: str) -> GenerationResult:
    """A request that failed as a whole: its `n` completions all say why."""
    return GenerationResult(tuple(Completion("", "error", 0, error=reason) for _ in range(n)), 0)


@runtime_checkable
class GenerationEngine(Protocol):
    """`generate` returns one result per request, in request order."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


# Optional abilities an engine may have beyond `generate`; callers check with isinstance.
@runtime_checkable
class ScoresContinuations(Protocol):
    """Log-probability of each continuation after the request's prompt (the critic as a verifier)."""

    def score(self, request: GenerationRequest, continuations: Sequence[str]) -> list[float]: ...


@runtime_checkable
class ScoresSteps(Protocol):
    """P(step i is sound) for each step of a solution, from a critic that scores steps itself (a served
    critic's `/v1/score_steps`); None when it cannot say for this solution (a server without it)."""

    def step_sound(self, question: str, steps: Sequence[str], answer: str | None,
                   images: Sequence[bytes]) -> list[float] | None: ...


@runtime_checkable
class ReloadsInPlace(Protocol):
    """Swaps its model in place (vLLM: two copies would not fit on the GPU)."""

    def reload(self, model_path: str) -> None: ...


@runtime_checkable
class Closable(Protocol):
    """Holds something (a process, a connection, GPU memory) that must be released."""

    def close(self) -> None: ...


def sampling_temperature(temperature: float) -> float:
    """The temperature an engine samples at: 0 (greedy) below `GREEDY_BELOW_TEMPERATURE`."""
    return 0.0 if temperature < GREEDY_BELOW_TEMPERATURE else temperature


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string (excluded, as vLLM and OpenAI do)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message, its text parts joined (image parts carry no text)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
