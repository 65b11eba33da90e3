"""Training examples and packing on the tiny Qwen2-VL: loss only on the target, and a packed
sequence gives every sample the same loss as running it alone."""

import io

import pytest
import torch
from PIL import Image

from mmc_ray.critique.rule_annotator import rule_critique
from mmc_ray.models.loading import load_vlm
from mmc_ray.tasks.solution import parse_reasoning
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.train.collate import collate_packed, collate_padded
from mmc_ray.train.examples import IGNORE_INDEX, ExampleBuilder
from mmc_ray.train.packed_attention import use_packed_attention


@pytest.fixture(scope="module")
def vlm(tiny_vlm_path):
    loaded = load_vlm(tiny_vlm_path, device="cpu", dtype="float32")
    use_packed_attention(loaded.model)  # packed batches need it on CPU; padded ones fall back to SDPA
    return loaded


def critique_rows(n=4):
    rows = []
    for p in generate_problems(n, seed=31):
        steps = list(parse_reasoning(p.reference_solution).steps)
        steps[0] = steps[0].replace(p.steps[0].value, str(int(float(p.steps[0].value)) + 1), 1)
        critique = rule_critique(p, steps, p.answer, key=p.problem_id)
        rows.append({"pair_id": f"{p.problem_id}:x", "problem_id": p.problem_id, "family": p.family,
                     "question": p.question, "image": p.image, "answer": p.answer, "answer_type": p.answer_type,
                     "choices": list(p.choices), "path_steps": steps, "path_answer": p.answer,
                     "critique_text": critique.to_text()})
    return rows


def test_loss_is_only_on_the_critique(vlm):
    builder = ExampleBuilder(vlm, max_seq_len=2048)
    rows = critique_rows()
    examples = builder.build_all(rows, "critic")
    assert builder.stats.built == len(examples) == len(rows)
    for ex, row in zip(examples, rows, strict=True):
        target = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
        assert vlm.tokenizer.decode(target) == row["critique_text"] + vlm.tokenizer.eos_token
        assert ex.labels[: len(ex) - len(target)] == [IGNORE_INDEX] * (len(ex) - len(target))
        image_tokens = sum(t == vlm.image_token_id for t in ex.input_ids)
        assert image_tokens == int(torch.tensor(ex.image_grid_thw).prod()) // vlm.merge_size**2 > 0


def test_text_only_examples_drop_the_image_and_keep_the_target(vlm):
    rows = critique_rows(2)
    seen, blind = (ExampleBuilder(vlm, max_seq_len=2048, text_only=t).build_all(rows, "critic")
                   for t in (False, True))
    for with_image, without in zip(seen, blind, strict=True):
        assert without.pixel_values is None and without.image_grid_thw == []
        assert vlm.image_token_id not in without.input_ids and vlm.image_token_id in with_image.input_ids
        target = [t for t, lab in zip(with_image.input_ids, with_image.labels, strict=True) if lab != IGNORE_INDEX]
        assert [t for t in without.labels if t != IGNORE_INDEX] == target


def test_annotator_examples_show_the_correct_sibling_and_teach_the_same_critique(vlm):
    rows = critique_rows(2)
    for row in rows:  # a divergent pair: the wrong path split from the reference after 0 shared steps
        reference = parse_reasoning(next(p for p in generate_problems(2, seed=31)
                                         if p.problem_id == row["problem_id"]).reference_solution)
        row.update(kind="divergent", divergence_depth=0, path_correct=False,
                   reference_steps=list(reference.steps), reference_answer=reference.answer)
    builder = ExampleBuilder(vlm, max_seq_len=2048)
    critic, annotator = builder.build_all(rows, "critic"), builder.build_all(rows, "annotator")
    for c, a, row in zip(critic, annotator, rows, strict=True):
        prompt = vlm.tokenizer.decode([t for t, lab in zip(a.input_ids, a.labels, strict=True) if lab == IGNORE_INDEX])
        assert "Solution A:" in prompt and row["reference_steps"][0] in prompt and "Solution A:" not in \
            vlm.tokenizer.decode(c.input_ids)
        assert [t for t in a.labels if t != IGNORE_INDEX] == [t for t in c.labels if t != IGNORE_INDEX]


def test_too_long_and_broken_images_are_counted_skips(vlm):
    rows = critique_rows(3)
    rows[1]["image"] = b"not an image"
    builder = ExampleBuilder(vlm, max_seq_len=2048)
    assert len(builder.build_all(rows, "critic")) == 2
    assert builder.stats.skipped == {"broken image": 1}
    short = ExampleBuilder(vlm, max_seq_len=40)
    assert short.build_all(critique_rows(2), "critic") == []
    assert short.stats.skipped == {"longer than max_seq_len=40": 2}


def test_pixel_budget_resizes_and_counts(tiny_vlm_path):
    small = load_vlm(tiny_vlm_path, device="cpu", min_pixels=56 * 56, max_pixels=56 * 56)
    builder = ExampleBuilder(small, max_seq_len=4096)
    [ex] = builder.build_all(critique_rows(1), "critic")  # 224x224 images, over the 56x56 budget
    assert builder.stats.resized_images == 1
    assert sum(t == small.image_token_id for t in ex.input_ids) == 4


def sft_target(vlm, ex) -> str:
    return vlm.tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX])


def test_actor_sft_examples_target_the_reference_solution(vlm):
    problems = list(generate_problems(2, seed=5))
    builder = ExampleBuilder(vlm, max_seq_len=2048)
    for ex, p in zip(builder.build_all([p.to_row() for p in problems], "actor-sft"), problems, strict=True):
        assert sft_target(vlm, ex).startswith(p.reference_solution)


def test_actor_sft_examples_target_a_given_solution_when_the_row_has_one(vlm):
    """Flywheel rows (ACTOR_SFT_SCHEMA) carry the actor's own correct path; benchmark rows without
    reference steps and without a solution are skipped and counted."""
    with_steps, without_steps = (p.to_row() for p in generate_problems(2, seed=6))
    without_steps["steps"] = []
    own = "Step 1: I count 3 circles.\nAnswer: 3"
    builder = ExampleBuilder(vlm, max_seq_len=2048)
    examples = builder.build_all([{**with_steps, "solution": own}, {**without_steps, "solution": None},
                                  {**without_steps, "solution": own}], "actor-sft")
    assert [sft_target(vlm, ex).startswith(own) for ex in examples] == [True, True]
    assert builder.stats.skipped == {"no reference solution": 1}


def per_sample_losses(logits, labels, spans):
    out = []
    for start, end in spans:
        lg, lab = logits[start:end - 1], labels[start + 1:end]
        out.append(torch.nn.functional.cross_entropy(lg, lab, ignore_index=IGNORE_INDEX))
    return torch.stack(out)


def test_packed_batch_gives_each_sample_its_own_loss(vlm):
    examples = ExampleBuilder(vlm, max_seq_len=2048).build_all(critique_rows(3), "critic")
    model = vlm.model.eval()
    with torch.no_grad():
        alone = torch.stack([model(**collate_padded([ex], vlm.tokenizer.pad_token_id, vlm.image_token_id)).loss
                             for ex in examples])
        packed = collate_packed(examples, model, vlm.image_token_id)
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        spans, start = [], 0
        for ex in examples:
            spans.append((start, start + len(ex)))
            start += len(ex)
        from_pack = per_sample_losses(logits, packed["labels"][0], spans)
        padded = collate_padded(examples, vlm.tokenizer.pad_token_id, vlm.image_token_id)
        padded_logits = model(**{k: v for k, v in padded.items() if k != "labels"}).logits
        from_padded = torch.stack([per_sample_losses(padded_logits[i], padded["labels"][i], [(0, len(ex))])[0]
                                   for i, ex in enumerate(examples)])
    torch.testing.assert_close(from_pack, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(from_padded, alone, atol=1e-4, rtol=1e-4)


def test_packed_loss_backpropagates(vlm):
    examples = ExampleBuilder(vlm, max_seq_len=2048).build_all(critique_rows(2), "critic")
    model = vlm.model.train()
    loss = model(**collate_packed(examples, model, vlm.image_token_id)).loss
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters())
    model.zero_grad()
    model.eval()


def test_images_survive_round_trip_as_png():
    Image.open(io.BytesIO(critique_rows(1)[0]["image"])).verify()
