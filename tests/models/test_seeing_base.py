"""The shipped seeing base (models/tiny-seeing) is what its card says: every file's sha256 matches the
card's table, nothing unlisted, under the repo's size budget, and it loads as a normal HF folder."""

from mmc_ray.models.loading import load_vlm
from mmc_ray.models.shipped import SEEING_BASE
from mmc_ray.train.pretrain_tiny import CARD, card_hashes, file_hashes

MAX_BYTES = 16 * 2 ** 20


def test_shipped_files_match_the_cards_hashes():
    listed = card_hashes((SEEING_BASE / CARD).read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"} <= set(listed)
    assert file_hashes(SEEING_BASE) == listed


def test_shipped_weights_fit_the_budget_and_load():
    assert (SEEING_BASE / "model.safetensors").stat().st_size <= MAX_BYTES
    vlm = load_vlm(SEEING_BASE, device="cpu", dtype="float32")
    config = vlm.model.config.text_config
    assert config.hidden_size // config.num_attention_heads >= 32  # vLLM's CPU attention runs it
