"""Request and response models of the critic service, and the checks that turn a request into a
`GenerationRequest` under the configured limits. No Ray, no torch: testable on its own.

Types and shapes are checked by pydantic (422 naming the field): numbers must be finite (a JSON
`NaN` or `1e999` is refused, not clamped) and text must be encodable (a lone surrogate such as
`"\\ud800"` is refused before it reaches a tokenizer). Sizes and the shape of a chat are checked here
against `ServeConfig` and raise `RequestRejected` (413 for bytes, 422 otherwise) naming the field too.
Images come as base64 or a `data:image/...` URI; remote URLs are refused: the server never fetches.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with `field` (= `param`)
kept for our own clients. Chat completions come whole or, with `stream: true`, as OpenAI's
`chat.completion.chunk` server-sent events ending in `data: [DONE]`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mmc_ray.config import ServeConfig
from mmc_ray.critique.prompts import critic_turn
from mmc_ray.critique.schema import ERROR_TYPES, Critique
from mmc_ray.engine_protocol import Completion, GenerationRequest, GenerationResult
from mmc_ray.images import ImageRejected, to_png


class RequestRejected(ValueError):
    def __init__(self, field: str, message: str, status: int = 422, code: str | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.status, self.code = field, status, code


class ModelNotFound(RequestRejected):
    def __init__(self, asked: str, served: Sequence[str]) -> None:
        names = ", ".join(repr(name) for name in served)
        super().__init__("model", f"the model {asked!r} does not exist; this server serves {names} "
                                  "(GET /v1/models)", status=404, code="model_not_found")


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str, field: str | None = None, code: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """Every error reply's body: OpenAI's shape (the official clients read `message`, `type`, `param`,
    `code`), plus `field` (= `param`) and whatever `extra` details the error has."""
    error = {"message": message, "type": error_type(status), "param": field, "code": code, **extra}
    if field is not None:
        error["field"] = field
    return {"error": error}


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="OpenAI's error type: invalid_request_error, authentication_error, "
                                  "server_error, ...")
    param: str | None = Field(default=None, description="the request field at fault, if one is")
    code: str | None = Field(default=None, description="e.g. model_not_found, json_invalid")
    field: str | None = Field(default=None, description="the same as param")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text: {e.reason} at character {e.start}") from None
    return text


# Every string a client sends: JSON lets "\ud800" through, no tokenizer or encoder does.
Text = Annotated[str, AfterValidator(_encodable)]


class ClientModel(BaseModel):
    """What every request model shares: finite numbers only (JSON's NaN and 1e999 parse to floats), and
    no coercion: `false` is not a temperature, `"3"` is not a token count (strict types)."""

    model_config = ConfigDict(allow_inf_nan=False, strict=True)


class CritiqueRequest(ClientModel):
    model_config = ConfigDict(extra="forbid")

    question: Text = Field(min_length=1, description="the question the solution answers")
    steps: list[Text] = Field(min_length=1, description="the solution's reasoning steps, in order")
    answer: Text | None = Field(default=None, description="the solution's final answer")
    image: Text | None = Field(default=None, description="base64 PNG/JPEG bytes or a data:image/... URI")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    model: Text | None = Field(default=None, description="the served model or one of its LoRA adapters "
                                                         "(GET /v1/models); default: the served model")


class CritiqueBody(BaseModel):
    verdict: Literal["correct", "incorrect"]
    first_wrong_step: int | None = None
    error_type: Literal[ERROR_TYPES] | None = None  # type: ignore[valid-type]
    explanation: str
    correction: str = ""


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CritiqueResponse(BaseModel):
    critique: CritiqueBody | None = Field(description="null when the critic's output did not parse")
    text: str = Field(description="the critic's raw output")
    parse_error: str = ""
    model: str
    version: int
    usage: Usage


class ScoreStepsResponse(BaseModel):
    step_sound: list[float] = Field(description="P(step i is sound), i = 1..n")
    p_correct: float = Field(description="P(the solution is correct)")
    first_wrong_step: list[float] = Field(description="P(the first wrong step is k), k = 1..n")
    model: str
    version: int


class TextPart(ClientModel):
    type: Literal["text"]
    text: Text


class ImageURL(ClientModel):
    url: Text


class ImagePart(ClientModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(ClientModel):
    role: Literal["system", "user", "assistant"]
    content: Text | list[ContentPart]


class StreamOptions(ClientModel):
    include_usage: bool = Field(default=False, description="a last chunk with the usage and no choices")


class ChatCompletionRequest(ClientModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use

    model: Text | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=8)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = None
    logprobs: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None


def decode_image(value: str, cfg: ServeConfig, field: str) -> bytes:
    """base64 or data-URI text → PNG bytes, within the byte and pixel limits."""
    if value.startswith(("http://", "https://")):
        raise RequestRejected(field, "remote image URLs are refused (the server fetches nothing); "
                                     "send base64 or a data: URI")
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestRejected(field, "a data: URI must be data:image/<type>;base64,<data>")
        mime = header.removeprefix("data:").removesuffix(";base64").split(";")[0].strip().lower()
        if not mime.startswith("image/"):
            raise RequestRejected(field, f"a data: URI must carry an image type, not {mime or 'none'!r}")
    if len(value) > cfg.max_image_bytes * 4 // 3 + 4:
        raise RequestRejected(field, f"image is larger than {cfg.max_image_bytes} bytes", status=413)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRejected(field, "not valid base64") from None
    try:
        return to_png(data, cfg.max_image_pixels)
    except ImageRejected as e:
        raise RequestRejected(field, str(e)) from None


def _max_tokens(requested: int | None, cfg: ServeConfig, field: str) -> int:
    if requested is None:
        return cfg.default_max_tokens
    if requested > cfg.max_tokens:
        raise RequestRejected(field, f"{requested} is more than this server's limit {cfg.max_tokens}")
    return requested


def _check_text(text: str, limit: int, field: str) -> None:
    if len(text) > limit:
        raise RequestRejected(field, f"{len(text)} characters, at most {limit}")


def critique_generation(req: CritiqueRequest, cfg: ServeConfig) -> GenerationRequest:
    _check_text(req.question, cfg.max_question_chars, "question")
    if len(req.steps) > cfg.max_steps:
        raise RequestRejected("steps", f"{len(req.steps)} steps, at most {cfg.max_steps}")
    for i, step in enumerate(req.steps):
        _check_text(step, cfg.max_step_chars, f"steps[{i}]")
    _check_text(req.answer or "", cfg.max_step_chars, "answer")
    images = (decode_image(req.image, cfg, "image"),) if req.image else ()
    return GenerationRequest(
        messages=critic_turn(req.question, bool(images), req.steps, req.answer), images=images,
        temperature=req.temperature, max_new_tokens=_max_tokens(req.max_tokens, cfg, "max_tokens"),
    )


def requested_adapter(model: str | None, served: str, adapters: Sequence[str]) -> str | None:
    """The adapter a request's `model` asks for: None (the server's default) for no name or the
    served model's, else one of `adapters`; any other name is OpenAI's 404 model_not_found."""
    if model is None or model == served:
        return None
    if model not in adapters:
        raise ModelNotFound(model, [served, *adapters])
    return model


def chat_generation(req: ChatCompletionRequest, cfg: ServeConfig) -> GenerationRequest:
    last = req.messages[-1]
    continued = last.role == "assistant" and isinstance(last.content, str)
    turns = req.messages[:-1] if continued else req.messages
    if not turns or turns[-1].role != "user":
        raise RequestRejected("messages", "a chat must end with a user message (optionally followed by "
                                          "one assistant message with text content, which is continued)")
    messages: list[dict[str, Any]] = []
    images: list[bytes] = []
    chars = 0
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            chars += len(m.content)
            messages.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(m.content):
            if isinstance(part, TextPart):
                chars += len(part.text)
                parts.append({"type": "text", "text": part.text})
            else:
                field = f"messages[{i}].content[{j}].image_url.url"
                images.append(decode_image(part.image_url.url, cfg, field))
                parts.append({"type": "image"})
        messages.append({"role": m.role, "content": parts})
    limit = cfg.max_question_chars + cfg.max_steps * cfg.max_step_chars
    if chars > limit:
        raise RequestRejected("messages", f"{chars} characters of text, at most {limit}")
    prefix = ""
    if continued:  # as vLLM's continue_final_message does
        prefix = messages.pop()["content"]
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return GenerationRequest(
        messages=tuple(messages), images=tuple(images), assistant_prefix=prefix, n=req.n,
        temperature=req.temperature, top_p=req.top_p, stop=stop, seed=req.seed, logprobs=req.logprobs,
        max_new_tokens=_max_tokens(req.max_completion_tokens or req.max_tokens, cfg, "max_tokens"),
    )


def critique_body(critique: Critique | None) -> CritiqueBody | None:
    if critique is None:
        return None
    return CritiqueBody(verdict=critique.verdict, first_wrong_step=critique.first_wrong_step,
                        error_type=critique.error_type, explanation=critique.explanation,
                        correction=critique.correction)


def _logprobs(c: Completion) -> dict[str, Any] | None:
    return None if c.logprobs is None else {"content": [{"logprob": lp} for lp in c.logprobs]}


def _usage(result: GenerationResult) -> dict[str, int]:
    completion_tokens = sum(c.completion_tokens for c in result.completions)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": result.prompt_tokens + completion_tokens}


def chat_completion(result: GenerationResult, model: str, completion_id: str, created: int) -> dict[str, Any]:
    """An OpenAI `chat.completion` object."""
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason, "logprobs": _logprobs(c)}
                        for i, c in enumerate(result.completions)],
            "usage": _usage(result)}


def chat_completion_events(result: GenerationResult, model: str, completion_id: str, created: int,
                           include_usage: bool) -> Iterator[str]:
    """The same completion as OpenAI's stream: per choice a role chunk, a content chunk and a
    finish chunk, then (when asked) a usage chunk with no choices, then `[DONE]`. Every chunk
    carries `usage: null` when a usage chunk follows, as OpenAI's do."""

    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                 "model": model, "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    for i, c in enumerate(result.completions):
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                      "logprobs": None}])
        if c.text:
            yield event([{"index": i, "delta": {"content": c.text}, "finish_reason": None,
                          "logprobs": _logprobs(c)}])
        yield event([{"index": i, "delta": {}, "finish_reason": c.finish_reason, "logprobs": None}])
    if include_usage:
        yield event([], _usage(result))
    yield "data: [DONE]\n\n"
