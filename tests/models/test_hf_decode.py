"""The HF engine's own decode loop (shared prefill, finished rows leave the batch) against
`transformers` generate, and its sampler against the distribution it draws from."""

import io

import pytest
import torch
from PIL import Image

from mmc_ray.engines.hf_decode import decode, pick_tokens


def png(color, size):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def batch(vlm, with_images):
    """Three prompts of different lengths (left padding), with different images or none."""
    from mmc_ray.models.loading import decode_image

    texts = ["How many?", "What is the value of the tallest bar in the chart?", "Sum the two numbers, then add 1."]
    images = [png((255, 0, 0), (200, 150)), png((0, 90, 200), (90, 120)), png((10, 200, 10), (64, 64))]
    prompts, vision = [], []
    for text, image in zip(texts, images, strict=True):
        content = [{"type": "image"}, {"type": "text", "text": text}] if with_images else text
        prompts.append(vlm.chat_prompt([{"role": "user", "content": content}]))
        vision.append(vlm.preprocess([decode_image(image)]) if with_images else None)
    return vlm.encode(prompts, vision)


@pytest.mark.parametrize("with_images", [True, False])
def test_greedy_decode_matches_transformers_generate(hf_engine, with_images):
    vlm = hf_engine.vlm
    inputs = batch(vlm, with_images)
    eos = hf_engine._eos_ids
    reference = vlm.model.generate(**inputs, do_sample=False, max_new_tokens=20, eos_token_id=eos,
                                   pad_token_id=vlm.tokenizer.pad_token_id, top_k=None)
    expected = []
    for row in reference[:, inputs["input_ids"].shape[1]:].tolist():
        end = next((i for i, t in enumerate(row) if t in eos), None)
        expected.append(row if end is None else row[:end + 1])
    ours = decode(vlm.model, inputs, [0, 1, 2, 1], max_new_tokens=20, temperature=1.0, top_p=1.0,
                  greedy=True, eos_ids=eos, logprobs=True)
    assert ours.token_ids == [*expected, expected[1]]  # the 4th row is a second sample of prompt 1
    assert max(map(len, expected)) > 10  # long enough to mean something
    assert [len(lp) for lp in ours.logprobs] == [len(ids) for ids in ours.token_ids]


def test_finished_rows_leave_the_batch_without_changing_the_others(hf_engine):
    """A stop after the first token ends two of three rows at once; the third decodes on alone and
    says what it said in a batch where nothing stopped."""
    vlm = hf_engine.vlm
    inputs = batch(vlm, with_images=True)
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_p=1.0, greedy=True, eos_ids=hf_engine._eos_ids)
    full = decode(vlm.model, inputs, [0, 1, 2], **kwargs)
    first_of_row_2 = full.token_ids[2][0]

    def stop_first_rows(ids):
        if ids.shape[1] == 1:
            return torch.arange(len(ids)) < len(ids) - 1
        return torch.zeros(len(ids), dtype=torch.bool)

    cut = decode(vlm.model, inputs, [0, 1, 2], stop_check=stop_first_rows, **kwargs)
    assert [len(ids) for ids in cut.token_ids[:2]] == [1, 1]
    assert cut.token_ids[2] == full.token_ids[2] and cut.token_ids[2][0] == first_of_row_2
    assert cut.hit_eos[:2] == [False, False]


def test_sampler_draws_from_the_softmax_and_respects_the_nucleus():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    probs = torch.softmax(logits[0] / 0.7, dim=-1)
    counts = torch.bincount(pick_tokens(logits, 0.7, 1.0, greedy=False), minlength=4) / 20000
    assert torch.allclose(counts, probs, atol=0.015)
    nucleus = pick_tokens(logits, 0.7, 0.8, greedy=False)  # the top two hold 0.78 + 0.19 of it
    assert set(nucleus.tolist()) == {0, 1}
    top = probs[:2] / probs[:2].sum()
    assert torch.allclose(torch.bincount(nucleus, minlength=2).float() / 20000, top, atol=0.015)
    assert pick_tokens(logits[:3], 0.7, 1e-9, greedy=False).tolist() == [0, 0, 0]
    assert pick_tokens(logits[:3], 1.0, 1.0, greedy=True).tolist() == [0, 0, 0]
