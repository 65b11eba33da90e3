"""The `GenerationEngine` contract, run over every local engine (hf; vllm in the vLLM tier).

Each test states one behaviour the search, the annotator, refinement and the critic service rely on,
whatever engine the config names. Seeds are compared within one engine only: each engine draws its
own samples from a seed (see `engines/vllm.py`).
"""

import io
import random

from PIL import Image

from mmc_ray.engine_protocol import GenerationEngine, GenerationRequest

TEXT = ({"role": "user", "content": "Count the circles, then add 3. Think step by step."},)
IMAGE = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many bars?"}]},)


def png(size=(96, 80)) -> bytes:
    image = Image.new("RGB", size, "white")
    for x in range(10, size[0] - 6, 20):
        for y in range(20, 60):
            image.putpixel((x, y), (0, 0, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def req(messages=TEXT, **kwargs) -> GenerationRequest:
    return GenerationRequest(messages, images=(png(),) if messages is IMAGE else (), **kwargs)


def chat_tokens(tokenizer, messages=TEXT, prefix="") -> int:
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text + prefix, add_special_tokens=False)["input_ids"])


def test_the_engine_satisfies_the_protocol(engine):
    assert isinstance(engine, GenerationEngine) and engine.name in ("hf", "vllm")


def test_a_mixed_batch_gives_one_result_per_request_in_order(engine):
    requests = [req(max_new_tokens=3), req(IMAGE, n=2, max_new_tokens=5, seed=1),
                req(assistant_prefix="Step 1:", max_new_tokens=4), req(IMAGE, n=3, max_new_tokens=2),
                *[req(max_new_tokens=2 + i % 3, seed=i) for i in range(6)]]  # beyond HF's batch of 4
    results = engine.generate(requests)
    assert [len(r.completions) for r in results] == [q.n for q in requests]
    for q, r in zip(requests, results, strict=True):
        for c in r.completions:
            assert c.finish_reason in ("stop", "length") and c.error == ""
            assert 1 <= c.completion_tokens <= q.max_new_tokens
    # results are in request order: each matches the same request generated alone
    alone = engine.generate([requests[0]])[0]
    greedy_alone = engine.generate([req(temperature=0.0, max_new_tokens=6)])[0]
    mixed = engine.generate([req(IMAGE, max_new_tokens=3), req(temperature=0.0, max_new_tokens=6)])[1]
    assert mixed.completions == greedy_alone.completions
    assert alone.prompt_tokens == results[0].prompt_tokens


def test_a_seeded_batch_larger_than_one_scheduler_step_completes(engine):
    """Found by bench/tree_overhead.py: vLLM's CPU build lost its engine when a seeded request's
    prefill was split across steps (64 distinct prompts of ~700 tokens: more than one step takes)."""
    rng = random.Random(0)
    words = ["count", "the", "circles", "then", "add", "three", "to", "the", "bars", "and", "read"]
    requests = [req(({"role": "user", "content": " ".join(rng.choice(words) for _ in range(400))},),
                    seed=i, max_new_tokens=3) for i in range(64)]
    results = engine.generate(requests)
    assert len(results) == 64
    assert all(c.finish_reason in ("stop", "length") for r in results for c in r.completions)
    assert sum(r.prompt_tokens for r in results) > 64 * 400


def test_n_samples_each_carry_one_logprob_per_token(engine):
    (result,) = engine.generate([req(IMAGE, n=3, seed=5, max_new_tokens=12, logprobs=True)])
    assert len(result.completions) == 3
    assert len({c.text for c in result.completions}) > 1  # samples, not copies
    for c in result.completions:
        assert len(c.logprobs) == c.completion_tokens and all(lp <= 1e-5 for lp in c.logprobs)
    assert engine.generate([req(max_new_tokens=4)])[0].completions[0].logprobs is None


def test_a_seeded_request_is_reproducible_and_another_seed_differs(engine):
    def draw(seed):
        result = engine.generate([req(IMAGE, n=2, seed=seed, max_new_tokens=12)])[0]
        return [c.text for c in result.completions]

    first = draw(7)
    assert draw(7) == first
    assert draw(8) != first


def test_greedy_is_deterministic_and_a_vanishing_temperature_is_greedy(engine):
    greedy = engine.generate([req(IMAGE, temperature=0.0, max_new_tokens=10, logprobs=True)])[0].completions
    assert engine.generate([req(IMAGE, temperature=0.0, max_new_tokens=10, logprobs=True)])[0].completions == greedy
    for tiny in (1e-300, 9e-6):
        again = engine.generate([req(IMAGE, temperature=tiny, max_new_tokens=10)])[0].completions[0]
        assert again.text == greedy[0].text


def test_stop_strings_are_cut_from_the_text(engine):
    full = engine.generate([req(temperature=0.0, max_new_tokens=24)])[0].completions[0]
    stop = next(full.text[i:i + 2] for i in range(3, len(full.text) - 1)
                if full.text[i:i + 2].isprintable() and "\ufffd" not in full.text[i:i + 2])
    cut = engine.generate([req(temperature=0.0, max_new_tokens=24, stop=(stop,))])[0].completions[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.completion_tokens < full.completion_tokens


def test_max_new_tokens_ends_a_completion_with_length(engine):
    c = engine.generate([req(temperature=0.0, max_new_tokens=3)])[0].completions[0]
    assert c.completion_tokens <= 3
    assert c.finish_reason == "length" or c.completion_tokens < 3


def test_a_broken_image_fails_only_its_own_request(engine):
    good, broken, other = engine.generate([
        req(IMAGE, n=2, seed=0, max_new_tokens=6),
        GenerationRequest(IMAGE, images=(b"not an image",), n=2),
        req(max_new_tokens=4),
    ])
    assert [c.finish_reason for c in broken.completions] == ["error", "error"]
    assert "could not be decoded" in broken.completions[0].error
    assert all(c.finish_reason in ("stop", "length") for c in good.completions + other.completions)


def test_prompt_tokens_count_the_template_the_prefix_and_the_image(engine, tokenizer):
    text = engine.generate([req(max_new_tokens=2)])[0]
    assert text.prompt_tokens == chat_tokens(tokenizer)
    prefixed = engine.generate([req(assistant_prefix="Step 1: there are", max_new_tokens=2)])[0]
    assert prefixed.prompt_tokens == chat_tokens(tokenizer, prefix="Step 1: there are")
    image = engine.generate([req(IMAGE, max_new_tokens=2)])[0]
    # the same text without the image part: the difference is the image's visual tokens
    no_image = ({"role": "user", "content": [{"type": "text", "text": "How many bars?"}]},)
    visual = image.prompt_tokens - chat_tokens(tokenizer, no_image)
    assert visual > 4  # 96x80 within 56²..112² pixels: several merged 28x28 patches, plus markers


def test_the_assistant_prefix_is_continued_not_restarted(engine, tokenizer):
    """MCTS expands a node by continuing its path: the greedy continuation of a prefix of a greedy
    completion is the rest of that completion."""
    full = engine.generate([req(IMAGE, temperature=0.0, max_new_tokens=16)])[0].completions[0]
    text = full.text.split("\ufffd")[0]  # a token may end inside a character: compare whole ones
    template = tokenizer.apply_chat_template(list(IMAGE), add_generation_prompt=True, tokenize=False)
    ids = tokenizer(template + text, add_special_tokens=False)["input_ids"]
    # cut where the prefix tokenises as the completion did, so the model sees the same tokens
    cut = next((i for i in range(len(text) // 2, 0, -1)
                if ids[:len(head := tokenizer(template + text[:i], add_special_tokens=False)["input_ids"])]
                == head), None)
    assert cut is not None and len(text) - cut >= 3, f"no usable cut in the greedy text {text!r}"
    rest = engine.generate([req(IMAGE, assistant_prefix=text[:cut], temperature=0.0, max_new_tokens=16)])[0]
    assert rest.completions[0].text.startswith(text[cut:]), (text[:cut], text[cut:], rest.completions[0].text)
