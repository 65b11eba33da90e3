"""LoRA adapters on every local engine (hf; vllm in the vLLM tier): several on one base, chosen per
request, each answering as its merged model would; loaded and unloaded by name while the engine runs;
refused when they were trained on another base or are not adapters at all."""

import json

import pytest

from mmc_ray.config import EngineConfig
from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.engines.hf import HFEngine
from mmc_ray.errors import BadInput, MissingInput
from mmc_ray.models.adapters import MANIFEST, base_hash
from tests.engines.test_engine_contract import png

PIXELS = {"device": "cpu", "dtype": "float32", "min_pixels": 56 * 56, "max_pixels": 112 * 112}
TARGETS = r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:q_proj|v_proj|up_proj)"


def random_adapter(base_path, folder, seed):
    """An adapter with random (non-zero) weights, so it changes what the base writes."""
    import peft
    import torch
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base_path)
    config = peft.LoraConfig(r=8, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(folder)
    (folder / MANIFEST).write_text(json.dumps({"base_sha256": base_hash(base_path)}))
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_vlm_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: str(random_adapter(tiny_vlm_path, root / name, seed)) for name, seed in (("a1", 1), ("a2", 2))}


def _specs(adapters):
    return tuple(f"{n}={p}" for n, p in adapters.items())


@pytest.fixture(scope="module")
def hf_engine(tiny_vlm_path, adapters):
    return HFEngine.from_config(EngineConfig(model_path=str(tiny_vlm_path), max_batch_size=4,
                                             adapters=_specs(adapters), **PIXELS))


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow])])
def engine(request, tiny_vlm_path, adapters):
    if request.param == "hf":
        yield request.getfixturevalue("hf_engine")
        return
    from mmc_ray.config import VLLMConfig
    from mmc_ray.engines.vllm import VLLMEngine

    cfg = EngineConfig(kind="vllm", model_path=str(tiny_vlm_path), adapters=_specs(adapters), **PIXELS,
                       vllm=VLLMConfig(cpu_kv_cache_gib=1, max_model_len=2048, max_images_per_prompt=1,
                                       max_loras=2, max_lora_rank=8))
    engine = VLLMEngine.from_config(cfg, enforce_eager=True)
    yield engine
    engine.close()


def _request(adapter=None, text="Describe the image."):
    messages = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},)
    return GenerationRequest(messages, images=(png(),), temperature=0.0, max_new_tokens=12, adapter=adapter)


def _text(engine, request):
    result = engine.generate([request])[0].completions[0]
    assert result.finish_reason != "error", result.error
    return result.text


def test_an_adapter_answers_as_its_merged_model_and_not_as_the_base(engine, adapters, tiny_vlm_path,
                                                                    tmp_path):
    import peft
    from transformers import AutoModelForImageTextToText

    merged = peft.PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_vlm_path),
                                            adapters["a1"]).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    for f in tiny_vlm_path.iterdir():  # tokenizer and image processor
        if not (tmp_path / "merged" / f.name).exists():
            (tmp_path / "merged" / f.name).write_bytes(f.read_bytes())
    merged_engine = HFEngine.from_path(tmp_path / "merged", **PIXELS)

    assert _text(engine, _request("a1")) == _text(merged_engine, _request())
    assert _text(engine, _request("a1")) != _text(engine, _request(""))
    assert _text(engine, _request("a1")) != _text(engine, _request("a2"))


def test_each_request_of_one_batch_gets_its_own_adapter(engine):
    alone = {name: _text(engine, _request(name)) for name in ("", "a1", "a2")}
    batch = engine.generate([_request("a2"), _request(""), _request("a1"), _request("a2")])
    assert [r.completions[0].text for r in batch] == [alone["a2"], alone[""], alone["a1"], alone["a2"]]


def test_a_request_without_an_adapter_uses_the_engines_default(engine):
    base = _text(engine, _request(""))
    engine.default_adapter = "a2"
    try:
        assert _text(engine, _request()) == _text(engine, _request("a2")) != base
    finally:
        engine.default_adapter = ""
    assert _text(engine, _request()) == base


def test_an_unknown_adapter_fails_its_own_request_only(engine):
    unknown, fine = engine.generate([_request("nope"), _request("a1")])
    assert unknown.completions[0].finish_reason == "error"
    assert "unknown adapter 'nope'" in unknown.completions[0].error and "a1" in unknown.completions[0].error
    assert fine.completions[0].finish_reason != "error"


def test_scores_come_from_the_requests_adapter(hf_engine):
    continuations = [" The answer is 3.", " Step 1 is wrong."]
    assert hf_engine.score(_request("a1"), continuations) != hf_engine.score(_request(""), continuations)
    assert hf_engine.score(_request("a1"), continuations) == hf_engine.score(_request("a1"), continuations)
    with pytest.raises(ValueError, match="unknown adapter"):
        hf_engine.score(_request("nope"), [" yes"])


def test_adapters_load_and_unload_by_name_while_the_engine_runs(engine, adapters):
    before = _text(engine, _request("a1"))
    engine.adapters.load("a1-v2", adapters["a1"])
    assert _text(engine, _request("a1-v2")) == before
    with pytest.raises(BadInput, match="loaded already"):
        engine.adapters.load("a1-v2", adapters["a2"])
    engine.adapters.unload("a1-v2")
    assert engine.generate([_request("a1-v2")])[0].completions[0].finish_reason == "error"
    assert _text(engine, _request("a1")) == before
    with pytest.raises(BadInput, match="not loaded"):
        engine.adapters.unload("a1-v2")


def test_an_adapter_of_another_base_or_a_folder_without_one_is_refused(engine, adapters, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(adapters["a1"], other)
    (other / MANIFEST).write_text(json.dumps({"base_sha256": "0" * 64}))
    with pytest.raises(BadInput, match="trained on another base"):
        engine.adapters.load("other", other)
    with pytest.raises(MissingInput, match=r"no adapter_config\.json"):
        engine.adapters.load("empty", tmp_path)
    with pytest.raises(BadInput, match="adapter name"):
        engine.adapters.load("bad name", adapters["a1"])
    assert "other" not in engine.adapters.paths and "empty" not in engine.adapters.paths
