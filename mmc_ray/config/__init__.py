"""Frozen, validated configuration for every stage: the sections and their defaults (`sections`), YAML
with dotted CLI overrides (`loading`), and the reference generated from them (`reference`)."""

from mmc_ray.config.loading import DEFAULT_CONFIG_PATH, apply_overrides, config_to_dict, load_config
from mmc_ray.config.sections import (
    AnnotateConfig,
    Config,
    ConfigError,
    Device,
    DType,
    EngineConfig,
    EngineKind,
    OpenAIConfig,
    PairMiningConfig,
    PipelineConfig,
    PretrainConfig,
    RefineConfig,
    ResourcesConfig,
    SamplingConfig,
    SearchConfig,
    ServeConfig,
    SimulatorConfig,
    TasksConfig,
    TinyModelConfig,
    TrainConfig,
    VLLMConfig,
)

__all__ = [
    "DEFAULT_CONFIG_PATH", "AnnotateConfig", "Config", "ConfigError", "DType", "Device", "EngineConfig",
    "EngineKind", "OpenAIConfig", "PairMiningConfig", "PipelineConfig", "PretrainConfig", "RefineConfig",
    "ResourcesConfig", "SamplingConfig", "SearchConfig", "ServeConfig", "SimulatorConfig", "TasksConfig",
    "TinyModelConfig", "TrainConfig", "VLLMConfig", "apply_overrides", "config_to_dict", "load_config",
]
