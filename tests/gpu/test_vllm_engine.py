"""`VLLMEngine` on a CUDA device with the tiny random-weight Qwen2-VL (needs the `gpu` extra).

Skipped, with the reason shown, where vLLM or CUDA is missing. Both engines run in float32 for the
comparison with `HFEngine`; the first greedy token's log-probability is the maximum of the same
distribution in both, so it must agree whatever the kernels. Later tokens agree too unless a
random-weight model has a near-tie (top-2 logits within float noise), which would show as a
mismatch after an agreeing first logprob.
"""

import io

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'mmc-ray[gpu]' on a CUDA machine)")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("vLLM needs a CUDA device; none is visible", allow_module_level=True)

from PIL import Image  # noqa: E402

from mmc_ray.config import EngineConfig, TinyModelConfig  # noqa: E402
from mmc_ray.engines.base import GenerationRequest  # noqa: E402
from mmc_ray.engines.vllm import VLLMEngine  # noqa: E402

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
TEXT = ({"role": "user", "content": "Count the circles, then add 3. Think step by step."},)
IMAGE = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many bars?"}]},)


def png() -> bytes:
    image = Image.new("RGB", (96, 80), "white")
    for x in range(10, 90, 20):
        for y in range(20, 60):
            image.putpixel((x, y), (0, 0, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def req(messages=TEXT, **kwargs) -> GenerationRequest:
    return GenerationRequest(messages, **kwargs)


@pytest.fixture(scope="module")
def engine(tiny_vlm_path):
    cfg = EngineConfig(kind="vllm", model_path=str(tiny_vlm_path), dtype="float32", gpu_memory_utilization=0.3,
                       max_model_len=2048, max_images_per_prompt=2, **PIXELS)
    engine = VLLMEngine.from_config(cfg, enforce_eager=True)  # no CUDA-graph capture: faster start
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf(tiny_vlm_path):
    from mmc_ray.engines.hf import HFEngine

    return HFEngine.from_path(tiny_vlm_path, device="cuda", dtype="float32", **PIXELS)


def test_n_samples_with_one_logprob_per_token(engine):
    (result,) = engine.generate([req(n=3, temperature=1.0, seed=1, max_new_tokens=12, logprobs=True)])
    assert len(result.completions) == 3 and result.prompt_tokens > 0
    for c in result.completions:
        assert c.finish_reason in ("stop", "length") and 1 <= c.completion_tokens <= 12
        assert len(c.logprobs) == c.completion_tokens and all(lp <= 1e-4 for lp in c.logprobs)


def test_seeded_requests_are_reproducible_in_any_batch(engine):
    def draw(seed, *others):
        result = engine.generate([req(n=2, temperature=1.0, seed=seed, max_new_tokens=16, logprobs=True),
                                  *others])[0]
        return [(c.text, c.logprobs) for c in result.completions]

    first = draw(7)
    assert draw(7, req(seed=99, max_new_tokens=8)) == first
    assert draw(8) != first
    assert first[0] != first[1]  # the n samples of a seeded request differ (sample i gets seed + i)


def test_stop_strings_are_cut_from_the_text(engine):
    full = engine.generate([req(temperature=0.0, max_new_tokens=24)])[0].completions[0]
    windows = [full.text[i:i + 2] for i in range(2, len(full.text) - 1) if "\ufffd" not in full.text[i:i + 2]]
    if not windows:
        pytest.skip(f"greedy text too short to pick a stop string from: {full.text!r}")
    stop = windows[0]
    cut = engine.generate([req(temperature=0.0, max_new_tokens=24, stop=(stop,))])[0].completions[0]
    assert cut.text == full.text[:full.text.find(stop)] and cut.finish_reason == "stop"


def test_an_image_request_runs_and_a_broken_image_fails_only_its_request(engine):
    text_only = engine.generate([req(max_new_tokens=4)])[0]
    good, broken, other = engine.generate([
        req(IMAGE, images=(png(),), n=2, seed=0, max_new_tokens=8),
        req(IMAGE, images=(b"not an image",), n=2),
        req(max_new_tokens=4),
    ])
    assert [c.finish_reason for c in broken.completions] == ["error", "error"]
    assert "could not be decoded" in broken.completions[0].error
    assert all(c.finish_reason in ("stop", "length") for c in good.completions + other.completions)
    assert good.prompt_tokens > text_only.prompt_tokens  # the image's visual tokens are in the prompt


def test_greedy_output_matches_hf(engine, hf):
    requests = [req(temperature=0.0, max_new_tokens=6, logprobs=True),
                req(IMAGE, images=(png(),), temperature=0.0, max_new_tokens=6, logprobs=True,
                    assistant_prefix="Step 1:")]
    for ours, theirs in zip(engine.generate(requests), hf.generate(requests), strict=True):
        assert ours.prompt_tokens == theirs.prompt_tokens  # same template, same image resize
        v, h = ours.completions[0], theirs.completions[0]
        assert v.logprobs[0] == pytest.approx(h.logprobs[0], abs=2e-3)
        assert v.completion_tokens == h.completion_tokens
        assert v.logprobs == pytest.approx(h.logprobs, abs=2e-3)
        if "\ufffd" not in v.text + h.text:  # incremental detokenisation may place partial bytes apart
            assert v.text == h.text


def test_reload_swaps_weights_and_frees_the_old_engine(engine, tiny_vlm_path, tmp_path_factory):
    from mmc_ray.models.tiny import build_tiny_vlm

    other = build_tiny_vlm(TinyModelConfig(seed=1), tmp_path_factory.mktemp("models") / "tiny-vlm-seed1")
    probe = [req(temperature=0.0, max_new_tokens=6, logprobs=True)]
    before = engine.generate(probe)[0].completions[0]
    free_before = torch.cuda.mem_get_info()[0]

    engine.reload(other)
    assert engine.model_path == str(other)
    after = engine.generate(probe)[0].completions[0]
    assert after.logprobs != pytest.approx(before.logprobs, abs=1e-4)

    with pytest.raises(FileNotFoundError):
        engine.reload(tmp_path_factory.mktemp("empty"))  # a bad folder leaves the loaded model serving
    assert engine.generate(probe)[0].completions[0].logprobs == pytest.approx(after.logprobs, abs=1e-5)

    engine.reload(tiny_vlm_path)
    assert engine.generate(probe)[0].completions[0].logprobs == pytest.approx(before.logprobs, abs=1e-4)
    assert torch.cuda.mem_get_info()[0] >= free_before - 2 * 2**30  # one engine's memory, not two
