"""Training examples: chat-formatted token ids with the loss on the target only.

A critic example is the critic prompt (image, question, numbered steps) with the critique text as
the assistant's reply; an annotator example the annotator prompt (the same path beside its correct
sibling) with the same reply; an actor-SFT example is the solve prompt with the reference solution. Image
placeholders are expanded to the image's visual tokens under the model's pixel budget. An example
longer than `max_seq_len` is skipped and counted, never cut: a truncated critique would teach the
critic to stop mid-sentence.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mmc_ray.critique.prompts import annotation_messages, critic_messages
from mmc_ray.critique.records import PathToCritique
from mmc_ray.models.loading import LoadedVLM, decode_image
from mmc_ray.tasks.descriptions import describe_messages
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.prompts import solve_messages

IGNORE_INDEX = -100


@dataclass
class TrainExample:
    example_id: str
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt
    pixel_values: np.ndarray | None = None  # (patches, patch_dim) float32
    image_grid_thw: list[list[int]] = field(default_factory=list)
    # (position predicting a value, visual-token positions to look at): `train/attention_guide.py`
    attention_targets: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class ExampleStats:
    built: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    resized_images: int = 0  # images outside [min_pixels, max_pixels], resized into the budget


class ExampleBuilder:
    """Turns dataset rows into `TrainExample`s for one model (its tokenizer, template, pixel budget)."""

    def __init__(self, vlm: LoadedVLM, max_seq_len: int, text_only: bool = False) -> None:
        self.vlm = vlm
        self.max_seq_len = max_seq_len
        self.text_only = text_only  # the images are dropped from every prompt (an ablation)
        size = vlm.image_processor.size
        self.min_pixels, self.max_pixels = size["shortest_edge"], size["longest_edge"]
        self.stats = ExampleStats()

    def critic(self, row: Mapping[str, Any]) -> TrainExample | None:
        """A CRITIQUE_SCHEMA row → critic example."""
        problem = self._seen(Problem.from_row(row))
        messages = critic_messages(problem, row["path_steps"], row["path_answer"])
        return self._build(row["pair_id"], problem, messages, row["critique_text"])

    def annotator(self, row: Mapping[str, Any]) -> TrainExample | None:
        """A CRITIQUE_SCHEMA row → annotator example: the prompt an `annotate.method=llm` annotator
        sees for that path (its correct sibling beside a divergent one) with the same critique."""
        item = PathToCritique.from_row(dict(row))
        item = dataclasses.replace(item, problem=self._seen(item.problem))
        return self._build(row["pair_id"], item.problem, annotation_messages(item), row["critique_text"])

    def actor_sft(self, row: Mapping[str, Any]) -> TrainExample | None:
        """A problem row (`PROBLEM_SCHEMA`, or `ACTOR_SFT_SCHEMA` with its `solution` text) → actor
        example answering with that solution, else with the problem's reference solution."""
        problem = self._seen(Problem.from_row(dict(row)))
        solution = row.get("solution")
        if solution is None and not problem.steps:
            self.stats.skipped["no reference solution"] += 1
            return None
        return self._build(problem.problem_id, problem, solve_messages(problem),
                           problem.reference_solution if solution is None else solution)

    def description(self, problem: Problem, text: str) -> TrainExample | None:
        """`problem`'s image → an example describing it with `text` (`tasks.descriptions`)."""
        return self._build(f"{problem.problem_id}/describe", self._seen(problem), describe_messages(problem),
                           text)

    def text(self, example_id: str, prompt: str, target: str) -> TrainExample | None:
        """A text-only example: `prompt` as the user's turn, `target` as the reply."""
        blank = Problem(example_id, "text", prompt, None, "", "text")
        return self._build(example_id, blank, ({"role": "user", "content": prompt},), target)

    def build_all(self, rows: Iterable[Mapping[str, Any]], task: str) -> list[TrainExample]:
        make = {"critic": self.critic, "annotator": self.annotator, "actor-sft": self.actor_sft}[task]
        return [ex for row in rows if (ex := make(row)) is not None]

    def _seen(self, problem: Problem) -> Problem:
        """The problem as the model is shown it: without its image when `text_only`."""
        return dataclasses.replace(problem, image=None) if self.text_only else problem

    def _build(self, example_id: str, problem: Problem, messages: Any, target: str) -> TrainExample | None:
        vision = None
        if problem.image is not None:
            try:
                image = decode_image(problem.image)
            except ValueError:
                self.stats.skipped["broken image"] += 1
                return None
            self.stats.resized_images += not self.min_pixels <= _pixels(image) <= self.max_pixels
            vision = self.vlm.preprocess([image])
        tokenizer = self.vlm.tokenizer
        prompt = self.vlm.expand_images(self.vlm.chat_prompt(messages), vision)
        # Tokenised separately so the prompt/target boundary is exact whatever the tokenizer merges.
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(target_ids) > self.max_seq_len:
            self.stats.skipped[f"longer than max_seq_len={self.max_seq_len}"] += 1
            return None
        self.stats.built += 1
        return TrainExample(
            example_id=example_id,
            input_ids=prompt_ids + target_ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids,
            pixel_values=None if vision is None else vision.pixel_values.numpy().astype(np.float32),
            image_grid_thw=[] if vision is None else vision.grid_thw.tolist(),
        )


def _pixels(image: Image.Image) -> int:
    return image.width * image.height
