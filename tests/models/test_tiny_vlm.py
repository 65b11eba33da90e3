import io

import pytest
import torch
from PIL import Image

from mmc_ray.config import TinyModelConfig
from mmc_ray.engine_protocol import GenerationEngine, GenerationRequest
from mmc_ray.models.loading import IMAGE_PLACEHOLDER, load_vlm
from mmc_ray.models.tiny import build_tiny_vlm, build_tokenizer


def png(color=(255, 0, 0), size=(200, 150)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def image_request(**kwargs) -> GenerationRequest:
    messages = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},)
    return GenerationRequest(messages=messages, images=(png(),), **kwargs)


@pytest.mark.parametrize("vocab_size", [256, 1024])
def test_tokenizer_round_trips_any_text(vocab_size):
    tok = build_tokenizer(vocab_size)
    text = "Step 1: 3 × 4 = 12 — ünïcode ✓\nAnswer: 12"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER) != tok.unk_token_id


def test_save_load_round_trip_gives_identical_logits(tiny_vlm_path):
    vlm = load_vlm(tiny_vlm_path, device="cpu", dtype="float32")
    assert type(vlm.model).__name__ == "Qwen2VLForConditionalGeneration"
    prompt = vlm.chat_prompt(image_request().messages)
    from mmc_ray.models.loading import decode_image

    inputs = vlm.encode([prompt], [vlm.preprocess([decode_image(png())])])
    n_image_tokens = int((inputs["input_ids"] == vlm.image_token_id).sum())
    grid = inputs["image_grid_thw"][0]
    assert n_image_tokens == int(grid.prod()) // vlm.merge_size**2 > 0
    with torch.no_grad():
        before = vlm.model(**inputs).logits
    again = load_vlm(tiny_vlm_path, device="cpu", dtype="float32")
    with torch.no_grad():
        after = again.model(**again.encode([prompt], [again.preprocess([decode_image(png())])])).logits
    torch.testing.assert_close(before, after)


def test_tiny_vlm_backpropagates_through_vision_and_text(tiny_vlm_path):
    vlm = load_vlm(tiny_vlm_path, device="cpu", dtype="float32")
    vlm.model.train()
    from mmc_ray.models.loading import decode_image

    inputs = vlm.encode([vlm.chat_prompt(image_request().messages, "Step 1:")],
                        [vlm.preprocess([decode_image(png())])])
    loss = vlm.model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    grads = {n: p.grad for n, p in vlm.model.named_parameters() if p.grad is not None}
    assert torch.isfinite(loss)
    assert any("visual" in n for n in grads) and any("language_model" in n for n in grads)


def test_image_count_mismatch_is_a_clear_error(tiny_vlm_path):
    vlm = load_vlm(tiny_vlm_path, device="cpu")
    with pytest.raises(ValueError, match="1 image placeholders but 0 images"):
        vlm.encode([f"a {IMAGE_PLACEHOLDER} b"], [None])


def test_missing_model_dir_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="mmc-ray model build-tiny"):
        load_vlm(tmp_path / "absent")


def test_build_is_deterministic_for_a_seed(tmp_path):
    a = build_tiny_vlm(TinyModelConfig(seed=3), tmp_path / "a")
    b = build_tiny_vlm(TinyModelConfig(seed=3), tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert not (tmp_path / ".a.tmp").exists()


def test_hf_engine_generates_from_an_image(hf_engine):
    assert isinstance(hf_engine, GenerationEngine)
    [result] = hf_engine.generate([image_request(n=3, max_new_tokens=12, seed=5, logprobs=True)])
    assert len(result.completions) == 3
    assert result.prompt_tokens > 16  # text tokens plus the image's visual tokens
    for c in result.completions:
        assert c.finish_reason in ("stop", "length")
        assert 0 < c.completion_tokens <= 12
        assert len(c.logprobs) == c.completion_tokens
        assert all(lp <= 0.0 for lp in c.logprobs)


def test_hf_engine_is_reproducible_for_a_seed_and_greedy_is_deterministic(hf_engine):
    req = image_request(n=2, max_new_tokens=10, seed=11)
    first = [c.text for c in hf_engine.generate([req])[0].completions]
    second = [c.text for c in hf_engine.generate([req])[0].completions]
    assert first == second
    greedy = image_request(temperature=0.0, max_new_tokens=10)
    assert hf_engine.generate([greedy])[0].completions == hf_engine.generate([greedy])[0].completions


def test_a_vanishing_temperature_is_greedy_not_a_nan_crash(hf_engine):
    # Found by the serve fuzzer: 1e-300 passed validation and made sampling divide by ~0.
    greedy = hf_engine.generate([image_request(temperature=0.0, max_new_tokens=10)])[0].completions
    for tiny in (1e-300, 5e-324, 9e-6):
        assert hf_engine.generate([image_request(temperature=tiny, max_new_tokens=10)])[0].completions == greedy


def test_hf_engine_stop_strings_and_length(hf_engine):
    # Greedy text of the tiny model, then ask again stopping at one of its characters.
    greedy = image_request(temperature=0.0, max_new_tokens=24)
    text = hf_engine.generate([greedy])[0].completions[0].text
    stop = next(ch for ch in text[3:] if ch.isprintable() and ch != "\ufffd")
    cut = hf_engine.generate([image_request(temperature=0.0, max_new_tokens=24, stop=(stop,))])
    completion = cut[0].completions[0]
    assert completion.finish_reason == "stop"
    assert stop not in completion.text and text.startswith(completion.text)
    short = hf_engine.generate([image_request(temperature=0.0, max_new_tokens=3)])[0].completions[0]
    assert short.completion_tokens <= 3


def test_hf_engine_batches_mixed_requests_and_isolates_broken_images(hf_engine):
    text_only = GenerationRequest(messages=({"role": "user", "content": "2 + 2?"},), max_new_tokens=5)
    broken = GenerationRequest(messages=image_request().messages, images=(b"not an image",))
    continued = image_request(assistant_prefix="Step 1:", max_new_tokens=5, temperature=0.5)
    many = [image_request(max_new_tokens=4, seed=i) for i in range(6)]  # more than max_batch_size
    results = hf_engine.generate([text_only, broken, continued, *many])
    assert len(results) == 9
    assert results[1].completions[0].finish_reason == "error"
    assert "could not be decoded" in results[1].completions[0].error
    assert all(r.completions[0].finish_reason != "error" for i, r in enumerate(results) if i != 1)
    assert results[0].prompt_tokens < results[2].prompt_tokens


def test_hf_engine_scores_continuations_consistently(hf_engine):
    from mmc_ray.critique.step_scores import outcome_openings, step_scores
    from mmc_ray.engines.hf import HFEngine

    req = image_request()
    openings = outcome_openings(5)  # different lengths: padding must not shift any score
    batched = hf_engine.score(req, openings)
    one_by_one = HFEngine(hf_engine.vlm, max_batch_size=1).score(req, openings)
    assert batched == pytest.approx(one_by_one, abs=1e-4)
    assert all(s < 0 for s in batched)
    # a log-probability can only fall as the continuation grows
    prefix, longer = hf_engine.score(req, ["Verdict: incorrect", "Verdict: incorrect\nFirst wrong step: 2\n"])
    assert longer <= prefix + 1e-6
    scores = step_scores(batched)
    assert sum(scores.first_wrong_step) + scores.p_correct == pytest.approx(1.0)
    assert list(scores.step_sound) == sorted(scores.step_sound, reverse=True)  # P(sound) never rises
