"""What is vLLM's own beyond the engine contract (tests/engines): seeds per request, agreement with
`HFEngine`, reload. On vLLM's CPU build in the vLLM tier, on CUDA where one is visible.

Both engines run in float32 for the comparison with `HFEngine`; the first greedy token's
log-probability is the maximum of the same distribution in both, so it must agree whatever the
kernels. Later tokens agree too unless a random-weight model has a near-tie (top-2 logits within
float noise), which would show as a mismatch after an agreeing first logprob.
"""

import io
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from mmc_ray.config import TinyModelConfig
from mmc_ray.engine_protocol import GenerationRequest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

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


def free_memory() -> int:
    """Free memory where the engine keeps its weights and KV cache (the GPU, or the host on CPU)."""
    import psutil

    return torch.cuda.mem_get_info()[0] if DEVICE == "cuda" else psutil.virtual_memory().available


def engine_processes() -> list:
    import psutil

    return psutil.Process().children(recursive=True)


def req(messages=TEXT, **kwargs) -> GenerationRequest:
    return GenerationRequest(messages, **kwargs)


@pytest.fixture(scope="module")
def hf(tiny_vlm_path):
    from mmc_ray.engines.hf import HFEngine

    return HFEngine.from_path(tiny_vlm_path, device=DEVICE, dtype="float32", **PIXELS)


def test_seeded_requests_are_reproducible_in_any_batch(vllm_engine):
    def draw(seed, *others):
        result = vllm_engine.generate([req(n=2, temperature=1.0, seed=seed, max_new_tokens=16, logprobs=True),
                                  *others])[0]
        return [(c.text, c.logprobs) for c in result.completions]

    first = draw(7)
    assert draw(7, req(seed=99, max_new_tokens=8)) == first
    assert draw(8) != first
    assert first[0] != first[1]  # the n samples of a seeded request differ (sample i gets seed + i)


def test_concurrent_calls_share_one_batch_and_keep_their_seeded_results(vllm_engine):
    """Calls from several threads run as one continuous batch (a short call made while a long one
    generates returns first) and each gets what it would alone: seeds are per request."""
    long_call = [req(n=2, temperature=1.0, seed=s, max_new_tokens=256) for s in range(4)]
    short_call = [req(images=(png(),), messages=IMAGE, temperature=1.0, seed=11, max_new_tokens=4)]
    alone = {"long": vllm_engine.generate(long_call), "short": vllm_engine.generate(short_call)}
    together: dict[str, list] = {}
    finished: list[str] = []

    def run(name, requests):
        together[name] = vllm_engine.generate(requests)
        finished.append(name)

    with ThreadPoolExecutor(2) as pool:
        pool.submit(run, "long", long_call)
        while not vllm_engine.unfinished_requests():  # the long call is generating
            time.sleep(0.01)
        pool.submit(run, "short", short_call).result(timeout=120)
    assert finished == ["short", "long"]
    for name in ("long", "short"):
        assert [[c.text for c in r.completions] for r in together[name]] == \
            [[c.text for c in r.completions] for r in alone[name]]


def test_greedy_output_matches_hf(vllm_engine, hf):
    requests = [req(temperature=0.0, max_new_tokens=6, logprobs=True),
                req(IMAGE, images=(png(),), temperature=0.0, max_new_tokens=6, logprobs=True,
                    assistant_prefix="Step 1:")]
    for ours, theirs in zip(vllm_engine.generate(requests), hf.generate(requests), strict=True):
        assert ours.prompt_tokens == theirs.prompt_tokens  # same template, same image resize
        v, h = ours.completions[0], theirs.completions[0]
        assert v.logprobs[0] == pytest.approx(h.logprobs[0], abs=2e-3)
        assert v.completion_tokens == h.completion_tokens
        assert v.logprobs == pytest.approx(h.logprobs, abs=2e-3)
        if "\ufffd" not in v.text + h.text:  # incremental detokenisation may place partial bytes apart
            assert v.text == h.text


def test_reload_waits_for_calls_swaps_weights_and_frees_the_old_engine(vllm_engine, tiny_vlm_path, tmp_path_factory):
    from mmc_ray.models.tiny import build_tiny_vlm

    other = build_tiny_vlm(TinyModelConfig(seed=1), tmp_path_factory.mktemp("models") / "tiny-vlm-seed1")
    probe = [req(temperature=0.0, max_new_tokens=6, logprobs=True)]
    before = vllm_engine.generate(probe)[0].completions[0]
    processes_before = len(engine_processes())
    free_before = free_memory()

    with ThreadPoolExecutor(1) as pool:  # a call in flight finishes on the old weights; reload waits for it
        in_flight = pool.submit(vllm_engine.generate, probe * 8)
        while not vllm_engine.unfinished_requests():
            time.sleep(0.01)
        vllm_engine.reload(other)
        old_weights = in_flight.result(timeout=60)
    assert all(r.completions[0].logprobs == pytest.approx(before.logprobs, abs=1e-4) for r in old_weights)
    assert vllm_engine.model_path == str(other)
    after = vllm_engine.generate(probe)[0].completions[0]
    assert after.logprobs != pytest.approx(before.logprobs, abs=1e-4)

    with pytest.raises(FileNotFoundError):
        vllm_engine.reload(tmp_path_factory.mktemp("empty"))  # a bad folder leaves the loaded model serving
    assert vllm_engine.generate(probe)[0].completions[0].logprobs == pytest.approx(after.logprobs, abs=1e-5)

    vllm_engine.reload(tiny_vlm_path)
    assert vllm_engine.generate(probe)[0].completions[0].logprobs == pytest.approx(before.logprobs, abs=1e-4)
    assert free_memory() >= free_before - 2 * 2**30  # one engine's memory, not two
    assert len(engine_processes()) == processes_before  # the old engine core's process ended
