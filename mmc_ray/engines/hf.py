"""`HFEngine`: batched `transformers` generation on CPU or CUDA behind the `GenerationEngine` protocol."""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mmc_ray.config import EngineConfig
from mmc_ray.config.adapter_names import BASE_MODEL, parse_adapter_specs
from mmc_ray.engine_protocol import (
    Completion,
    GenerationRequest,
    GenerationResult,
    apply_stop,
    sampling_temperature,
)
from mmc_ray.engines.hf_adapters import PeftAdapters
from mmc_ray.engines.hf_decode import StopCheck, decode
from mmc_ray.models.loading import LoadedVLM, VisionInputs, decode_image, load_vlm
from mmc_ray.seeding import stable_seed

Unit = tuple[int, int]  # (request index, sample index)
VISION_CACHE_SIZE = 512  # preprocessed image sets; MCTS sends each problem's image many times


def _chunk_seed(requests: Sequence[GenerationRequest], units: Sequence[Unit]) -> int | None:
    """One seed for a generate() call, derived from its members' seeds, so a seeded batch is
    reproducible (HF sampling draws from one global generator per call)."""
    seeds = [(requests[r].seed, s) for r, s in units]
    if all(seed is None for seed, _ in seeds):
        return None
    return stable_seed(seeds)


class HFEngine:
    """Runs a local Hugging Face VLM. Requests are grouped by adapter and sampling parameters and
    generated in batches of at most `max_batch_size` sequences (each of a request's `n` samples is a
    sequence). `adapters` ({name: folder}) are loaded on the model; a request without an adapter of its
    own uses `default_adapter`."""

    name = "hf"

    def __init__(self, vlm: LoadedVLM, max_batch_size: int = 16, adapters: Mapping[str, str] | None = None,
                 default_adapter: str = BASE_MODEL) -> None:
        self.vlm = vlm
        self.max_batch_size = max_batch_size
        self.adapters = PeftAdapters(vlm.model)
        for name, path in (adapters or {}).items():
            self.adapters.load(name, path)
        self.default_adapter = default_adapter
        self._vision_cache: OrderedDict[tuple[bytes, ...], VisionInputs | None] = OrderedDict()
        self._stop_checks: dict[tuple[str, ...], StopCheck] = {}
        eos = vlm.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self._eos_ids = sorted({vlm.tokenizer.eos_token_id, *eos} - {None})

    @classmethod
    def from_path(cls, model_path: str | Path, device: str = "auto", dtype: str = "auto",
                  max_batch_size: int = 16, min_pixels: int | None = None, max_pixels: int | None = None,
                  adapters: Mapping[str, str] | None = None, default_adapter: str = BASE_MODEL) -> HFEngine:
        return cls(load_vlm(model_path, device, dtype, min_pixels, max_pixels), max_batch_size, adapters,
                   default_adapter)

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> HFEngine:
        return cls.from_path(cfg.model_path, cfg.device, cfg.dtype, cfg.max_batch_size, cfg.min_pixels,
                             cfg.max_pixels, parse_adapter_specs(cfg.adapters), cfg.adapter)

    def _adapter_of(self, request: GenerationRequest) -> str:
        return self.default_adapter if request.adapter is None else request.adapter

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        completions: dict[Unit, Completion] = {}
        prompt_tokens = [0] * len(requests)
        groups: dict[tuple, list[Unit]] = defaultdict(list)
        vision = {}
        for r, req in enumerate(requests):
            adapter = self._adapter_of(req)
            try:
                self.adapters.require(adapter)
                vision[r] = self._vision(req.images)
            except ValueError as e:
                # A broken image or an unknown adapter fails its own request only, never the batch around it.
                for s in range(req.n):
                    completions[r, s] = Completion("", "error", 0, error=str(e))
                continue
            key = (adapter, req.temperature, req.top_p, req.max_new_tokens, req.stop, req.logprobs)
            groups[key].extend((r, s) for s in range(req.n))
        for (adapter, *_), units in groups.items():
            for start in range(0, len(units), self.max_batch_size):
                chunk = units[start:start + self.max_batch_size]
                with self.adapters.active(adapter):
                    counts = self._generate_chunk(requests, vision, chunk, completions)
                for (r, _), count in zip(chunk, counts, strict=True):
                    prompt_tokens[r] = count
        return [
            GenerationResult(tuple(completions[r, s] for s in range(req.n)), prompt_tokens[r])
            for r, req in enumerate(requests)
        ]

    @torch.inference_mode()
    def score(self, request: GenerationRequest, continuations: Sequence[str]) -> list[float]:
        """Log-probability the model gives each continuation of the request's prompt (the sum over
        its tokens), from one forward pass per batch, with the request's adapter; sampling parameters
        are ignored."""
        with self.adapters.active(self.adapters.require(self._adapter_of(request))):
            return self._score(request, continuations)

    def _score(self, request: GenerationRequest, continuations: Sequence[str]) -> list[float]:
        vision = self._vision(request.images)
        prompt = self.vlm.chat_prompt(request.messages, request.assistant_prefix)
        prompt_len = len(self.vlm.tokenizer(self.vlm.expand_images(prompt, vision),
                                            add_special_tokens=False)["input_ids"])
        scores: list[float] = []
        for start in range(0, len(continuations), self.max_batch_size):
            chunk = continuations[start:start + self.max_batch_size]
            inputs = self.vlm.encode([prompt + c for c in chunk], [vision] * len(chunk))
            logits = self.vlm.model(**inputs).logits.float()
            ids = inputs["input_ids"]
            token_logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            # Left padding: each row's continuation is its last (length - prompt_len) tokens.
            for row, length in enumerate(inputs["attention_mask"].sum(dim=1).tolist()):
                scores.append(float(token_logprobs[row, -(length - prompt_len):].sum()))
        return scores

    def _vision(self, images: tuple[bytes, ...]) -> VisionInputs | None:
        """Decoded and preprocessed images, cached by their bytes (LRU)."""
        if images in self._vision_cache:
            self._vision_cache.move_to_end(images)
            return self._vision_cache[images]
        inputs = self.vlm.preprocess([decode_image(b) for b in images])
        self._vision_cache[images] = inputs
        if len(self._vision_cache) > VISION_CACHE_SIZE:
            self._vision_cache.popitem(last=False)
        return inputs

    @torch.inference_mode()
    def _generate_chunk(self, requests: Sequence[GenerationRequest], vision: dict, chunk: Sequence[Unit],
                        out: dict[Unit, Completion]) -> list[int]:
        first = requests[chunk[0][0]]
        prompt_of = {r: i for i, r in enumerate(dict.fromkeys(r for r, _ in chunk))}  # each prompt once
        prompts = [self.vlm.chat_prompt(requests[r].messages, requests[r].assistant_prefix)
                   for r in prompt_of]
        inputs = self.vlm.encode(prompts, [vision[r] for r in prompt_of])
        seed = _chunk_seed(requests, chunk)
        if seed is not None:
            torch.manual_seed(seed)
        tokenizer = self.vlm.tokenizer
        decoded = decode(
            self.vlm.model, inputs, [prompt_of[r] for r, _ in chunk],
            max_new_tokens=first.max_new_tokens, temperature=first.temperature, top_p=first.top_p,
            greedy=sampling_temperature(first.temperature) == 0.0, eos_ids=self._eos_ids,
            stop_check=self._stop_check(first.stop), logprobs=first.logprobs)
        for row, unit in enumerate(chunk):
            ids = decoded.token_ids[row]
            text, stopped = apply_stop(tokenizer.decode(ids, skip_special_tokens=True), first.stop)
            out[unit] = Completion(
                text=text,
                finish_reason="stop" if stopped or decoded.hit_eos[row] else "length",
                completion_tokens=len(ids),
                logprobs=tuple(decoded.logprobs[row]) if decoded.logprobs is not None else None,
            )
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        return [prompt_tokens[prompt_of[r]] for r, _ in chunk]

    def _stop_check(self, stop: tuple[str, ...]) -> StopCheck | None:
        """Whether each row's generated ids end in one of the stop strings (tokens may split them)."""
        if not stop:
            return None
        if stop not in self._stop_checks:
            from transformers import StopStringCriteria

            criteria = StopStringCriteria(self.vlm.tokenizer, list(stop))
            self._stop_checks[stop] = lambda ids: criteria(ids, None)
        return self._stop_checks[stop]
