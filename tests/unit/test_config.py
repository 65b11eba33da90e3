from pathlib import Path

import pytest

from mmc_ray.config import Config, ConfigError, config_to_dict, load_config


def test_dotted_overrides_are_typed():
    cfg = load_config(overrides=["generate.temperature=0", "tasks.difficulties=[4, 5]",
                                 "actor.simulator.seed=7", "actor.kind=simulated"])
    assert cfg.generate.temperature == 0.0 and isinstance(cfg.generate.temperature, float)
    assert cfg.tasks.difficulties == (4, 5)
    assert cfg.actor.simulator.seed == 7
    assert cfg.actor.kind == "simulated"
    assert load_config(overrides=["train.learning_rate=3e-4"]).train.learning_rate == 3e-4


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.generate.n = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tasks.nn=1"], "unknown key tasks.nn; allowed keys here: ['n',"),
        (["bogus.x=1"], "unknown key bogus"),
        (["actor.kind=vllmx"], "actor.kind: 'vllmx' is not allowed; choose one of ['hf', 'simulated', 'rule', 'blind', 'openai', 'vllm']"),
        (["actor.device=tpu"], "actor.device: 'tpu' is not allowed"),
        (["generate.n=abc"], "generate.n: expected int, got 'abc'"),
        (["generate.n=0"], "generate.n: must be >= 1"),
        (["generate.top_p=0"], "generate.top_p: must be in (0, 1]"),
        (["actor.simulator.observe_error_rate=1.5"], "actor.simulator.observe_error_rate: must be in [0, 1]"),
        (["tasks.families=counting"], "tasks.families: expected a list"),
        (["tasks.difficulties=[0]"], "tasks.difficulties: each must be 1..5"),
        (["tiny_model.num_heads=3"], "tiny_model.hidden_size: must be divisible by num_heads"),
        (["generate.n=true"], "generate.n: expected int, got True"),
        (["novalue"], "is not of the form dotted.key=value"),
        (["annotate.mining.low_value=0.9"], "annotate.mining.low_value: need 0 <= low_value < high_value <= 1"),
        (["generate.n.x=1"], "generate.n is not a section"),
        (["actor.kind=vllm", "actor.device=cpu", "actor.vllm.tensor_parallel_size=2"],
         "actor.vllm.tensor_parallel_size: kind=vllm on device=cpu runs one process per replica"),
        (["critic.vllm.cpu_kv_cache_gib=0"], "critic.vllm.cpu_kv_cache_gib: must be >= 1"),
        (["actor.kind=hf", "actor.vllm.concurrent_batches=2"], "actor.vllm.concurrent_batches: > 1 needs kind=vllm"),
        (["actor.kind=vllm", "actor.vllm.concurrent_batches=0"], "actor.vllm.concurrent_batches: must be >= 1"),
        (["actor.kind=vllm", "actor.device=cuda", "actor.resources.num_gpus=0.5", "train.use_gpu=true",
          "pipeline.streaming=true"],
         "actor.resources.num_gpus: kind=vllm with a fraction of a GPU (0.5) while Ray Train uses GPUs"),
        (["actor.kind=vllm", "actor.device=cuda", "actor.vllm.tensor_parallel_size=2"],
         "actor.vllm.tensor_parallel_size: kind=vllm with tensor_parallel_size > 1 needs resources.num_gpus"),
        (["critic.vllm.gpu_memory_utilization=1.5"], "critic.vllm.gpu_memory_utilization: must be in (0, 1]"),
        (["critic.vllm.tensor_parallel_size=0"], "critic.vllm.tensor_parallel_size: must be >= 1"),
        (["pipeline.retrain_actor=true"],  # the default actor is the simulated solver
         "pipeline.retrain_actor: fine-tunes the actor's local model: needs actor.kind hf or vllm, not simulated"),
        (["pipeline.actor_max_steps=0"], "pipeline.actor_max_steps: must be >= 1"),
        (["critic.max_pixels=50176"], "critic.max_pixels: critic runs the model `train` fine-tunes, so it must see "
                                      "images at the budget it was trained at: critic.min_pixels/max_pixels "
                                      "(3136, 50176) must equal train.min_pixels/max_pixels (3136, 12544)"),
        (["train.task=annotator", "annotator.min_pixels=1024"], "annotator.max_pixels: annotator runs the model"),
        (["actor.kind=hf", "pipeline.retrain_actor=true", "train.max_pixels=50176", "critic.max_pixels=50176"],
         "actor.max_pixels: actor runs the model"),
        (["train.lora.r=12"], "train.lora.r: must be one of [1, 8, 16, 32, 64, 128, 256, 320, 512] (vLLM's ranks)"),
        (["train.lora.target_modules=[fc1]"], "train.lora.target_modules: a non-empty subset of ['q_proj'"),
        (["train.lora.dropout=1"], "train.lora.dropout: must be in [0, 1)"),
        (["train.lora.enabled=true", "train.freeze=[language]"],
         "train.lora.enabled: trains an adapter on the language model: remove language from train.freeze"),
        (["critic.kind=hf", "critic.adapters=[critic-r1]"],
         "critic.adapters: adapter 'critic-r1': expected NAME=PATH"),
        (["critic.kind=hf", "critic.adapters=[a=x,a=y]"], "critic.adapters: adapter name 'a' is given twice"),
        (["critic.kind=hf", "critic.adapters=[bad name=x]"], "critic.adapters: adapter name 'bad name'"),
        (["critic.kind=hf", "critic.adapters=[a=x]", "critic.adapter=b"],
         "critic.adapter: 'b' is not one of adapters (a)"),
        (["critic.kind=rule", "critic.adapters=[a=x]"], "critic.adapters: kind=rule cannot load LoRA adapters"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert message in str(err.value)


def test_the_pixel_budget_binds_only_engines_that_run_the_trained_model():
    served = ["critic.kind=openai", "critic.openai.base_url=http://127.0.0.1:1/v1", "critic.max_pixels=50176"]
    assert load_config(overrides=served).critic.max_pixels == 50176  # a server has its own budget
    assert load_config(overrides=["actor.max_pixels=50176"]).actor.max_pixels == 50176  # not trained here


def test_a_role_loads_adapters_and_picks_one():
    cfg = load_config(overrides=["critic.kind=hf", "critic.adapters=[critic-r1=runs/r1/critic/adapter,"
                                 "critic-r2=runs/r2/critic/adapter]", "critic.adapter=critic-r2"])
    assert cfg.critic.adapters == ("critic-r1=runs/r1/critic/adapter", "critic-r2=runs/r2/critic/adapter")
    assert cfg.critic.adapter == "critic-r2"


def test_vllm_runs_on_cpu_when_told():
    cfg = load_config(overrides=["actor.kind=vllm", "actor.device=cpu", "actor.vllm.cpu_kv_cache_gib=1"])
    assert (cfg.actor.kind, cfg.actor.device, cfg.actor.vllm.cpu_kv_cache_gib) == ("vllm", "cpu", 1)


def test_vllm_engine_fields_load():
    cfg = load_config(overrides=["actor.kind=vllm", "actor.device=cuda", "actor.vllm.tensor_parallel_size=2",
                                 "actor.resources.num_gpus=2", "actor.vllm.gpu_memory_utilization=0.5",
                                 "actor.vllm.max_model_len=4096", "actor.vllm.enable_prefix_caching=false"])
    assert cfg.actor.kind == "vllm" and cfg.actor.vllm.tensor_parallel_size == 2
    assert cfg.actor.vllm.gpu_memory_utilization == 0.5 and cfg.actor.vllm.max_model_len == 4096
    assert cfg.actor.vllm.enable_prefix_caching is False


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_partial_yaml_keeps_defaults_and_round_trips(tmp_path: Path):
    partial = tmp_path / "p.yaml"
    partial.write_text("generate:\n  n: 4\n")
    cfg = load_config(partial)
    assert cfg.generate.n == 4 and cfg.tasks == Config().tasks
    dumped = tmp_path / "dumped.yaml"
    import yaml

    dumped.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(dumped) == cfg
