"""Stage one of teaching the tiny VLM to see: its vision tower trained on a direct objective.

A `FactReader` head reads every named fact of an image (`TaskInstance.facts`: the count of red
circles, bar C's value, the number in the blue box, side AB's length) out of the image's visual
tokens, the projector's output the language model will read: one learned query per fact name
attends over the tokens, then a classifier over every value seen. Trained with the vision tower and
projector, it forces those tokens to carry each value, per name, which a language model's loss
through a tiny LM never managed (bench/perception_probe.py). The head is dropped afterwards.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from mmc_ray.models.loading import LoadedVLM, decode_image
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.synthetic import Facts

ABSENT = "none"  # the value of a fact name the image does not show (a bar label not drawn)


@dataclass(frozen=True)
class FactVocabulary:
    """Per family, the fact names a query exists for; the values a fact can take (shared)."""

    names: dict[str, tuple[str, ...]]
    values: tuple[str, ...]

    @classmethod
    def of(cls, scenes: Sequence[tuple[Problem, Facts]]) -> FactVocabulary:
        names: dict[str, set[str]] = collections.defaultdict(set)
        values = {ABSENT}
        for problem, facts in scenes:
            names[problem.family].update(name for name, _ in facts)
            values.update(value for _, value in facts)
        return cls({f: tuple(sorted(n)) for f, n in sorted(names.items())}, tuple(sorted(values)))

    @cached_property
    def slots(self) -> tuple[tuple[str, str], ...]:
        """Every (family, name), the order of the head's queries."""
        return tuple((family, name) for family, names in self.names.items() for name in names)

    @cached_property
    def _slot_index(self) -> dict[tuple[str, str], int]:
        return {slot: i for i, slot in enumerate(self.slots)}

    @cached_property
    def _value_index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.values)}

    def targets(self, problem: Problem, facts: Facts) -> tuple[list[int], list[int]]:
        """(query index, value index) of every name of the image's family; names it does not show
        take ABSENT, a value outside the vocabulary too."""
        shown = dict(facts)
        absent = self._value_index[ABSENT]
        names = self.names.get(problem.family, ())
        return ([self._slot_index[(problem.family, n)] for n in names],
                [self._value_index.get(shown.get(n, ABSENT), absent) for n in names])


class FactReader(torch.nn.Module):
    """Learned queries, one per fact slot, attending over one image's visual tokens → value logits."""

    def __init__(self, hidden: int, slots: int, values: int, heads: int = 4) -> None:
        super().__init__()
        self.queries = torch.nn.Embedding(slots, hidden)
        self.norm = torch.nn.LayerNorm(hidden)
        self.attention = torch.nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.classify = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, 2 * hidden),
                                            torch.nn.GELU(), torch.nn.Linear(2 * hidden, values))

    def forward(self, tokens: torch.Tensor, slot_ids: torch.Tensor) -> torch.Tensor:
        """tokens (images, visual tokens, hidden), slot_ids (images, slots) → (images, slots, values)."""
        queries = self.queries(slot_ids)
        keys = self.norm(tokens)
        read, _ = self.attention(queries, keys, keys, need_weights=False)
        return self.classify(queries + read)


def visual_tokens(vlm: LoadedVLM, images: Sequence[bytes]) -> torch.Tensor:
    """(images, visual tokens, hidden): the projector's output for same-size images."""
    vision = vlm.preprocess([decode_image(data) for data in images])
    merged = vlm.model.model.visual(vision.pixel_values, grid_thw=vision.grid_thw).pooler_output
    return merged.reshape(len(images), -1, merged.shape[-1])


def _batch(vocab: FactVocabulary,
           scenes: Sequence[tuple[Problem, Facts]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot and value ids, padded per batch to the family with most names (padding: value -100)."""
    rows = [vocab.targets(problem, facts) for problem, facts in scenes]
    width = max(len(slots) for slots, _ in rows)
    slot_ids = torch.zeros((len(rows), width), dtype=torch.long)
    value_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (slots, values) in enumerate(rows):
        slot_ids[i, : len(slots)] = torch.tensor(slots)
        value_ids[i, : len(values)] = torch.tensor(values)
    return slot_ids, value_ids


@dataclass(frozen=True)
class VisionFit:
    losses: list[float]
    trainable_params: int


def fit_vision(vlm: LoadedVLM, scenes: Sequence[tuple[Problem, Facts]], vocab: FactVocabulary, *,
               steps: int, batch_size: int, learning_rate: float, seed: int,
               after_step: Callable[[list[float], FactReader], None] | None = None) -> VisionFit:
    """Train the vision tower and projector (the language model frozen) with a `FactReader`."""
    from mmc_ray.config import TrainConfig
    from mmc_ray.train.step import LocalEngine, freeze_parts

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = vlm.model.train()
    reader = FactReader(model.config.text_config.hidden_size, len(vocab.slots), len(vocab.values))
    trainable, _ = freeze_parts(model, ("language",))
    cfg = TrainConfig(learning_rate=learning_rate, max_steps=steps, warmup_steps=max(steps // 20, 1))
    engine = LocalEngine.for_model(model, cfg, extra=reader)
    losses: list[float] = []
    order: list[int] = []
    while len(losses) < steps:
        if len(order) < batch_size:
            order += rng.sample(range(len(scenes)), len(scenes))
        batch = [scenes[i] for i in order[:batch_size]]
        del order[:batch_size]
        slot_ids, value_ids = _batch(vocab, batch)
        logits = reader(visual_tokens(vlm, [problem.image for problem, _ in batch]), slot_ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), value_ids.flatten(), ignore_index=-100)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(losses, reader)
            model.train()
            reader.train()
    model.eval()
    return VisionFit(losses, trainable + sum(p.numel() for p in reader.parameters()))


def fact_accuracy(vlm: LoadedVLM, reader: FactReader, scenes: Sequence[tuple[Problem, Facts]],
                  vocab: FactVocabulary, batch_size: int = 32) -> dict[str, float]:
    """Per family, the share of the facts an image shows (absent names and zero counts aside) the
    reader gets right."""
    hits: dict[str, list[bool]] = collections.defaultdict(list)
    vlm.model.eval()
    reader.eval()
    absent, zero = vocab.values.index(ABSENT), vocab.values.index("0") if "0" in vocab.values else -1
    with torch.no_grad():
        for start in range(0, len(scenes), batch_size):
            batch = scenes[start:start + batch_size]
            slot_ids, value_ids = _batch(vocab, batch)
            predicted = reader(visual_tokens(vlm, [p.image for p, _ in batch]), slot_ids).argmax(-1)
            for (problem, _), want, got in zip(batch, value_ids, predicted, strict=True):
                shown = (want != -100) & (want != absent) & (want != zero)
                hits[problem.family] += (got[shown] == want[shown]).tolist()
    return {family: sum(h) / len(h) for family, h in sorted(hits.items())}
