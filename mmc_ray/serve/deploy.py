"""Start the critic service on the connected Ray cluster, or hot-swap its checkpoint.

Backend hf: deploying again with only `serve.checkpoint` changed does not redeploy: it points the
checkpoint registry at the new critic and every replica swaps it in place
(`mmc_ray.serve.checkpoints`); LoRA adapters are swapped the same way (`change_adapters`). Any
other change redeploys the app (Serve replaces replicas without dropping requests).

Backend vllm: the checkpoint is the Ray Serve LLM deployment's model_source, so every deploy
redeploys the app and Serve rolls the new critic out replica by replica (`mmc_ray.serve.llm`). Its
adapters are copied to `serve.adapter_store` first (`mmc_ray.serve.adapter_store`), where Ray Serve
LLM loads them from.
"""

from __future__ import annotations

import dataclasses

from mmc_ray.config import Config
from mmc_ray.seeding import stable_hash

APP_NAME = "mmc-critic"


def deploy(cfg: Config, app_name: str = APP_NAME, route_prefix: str = "/") -> str:
    """Deploy (or hot-swap) the critic app; returns its base URL (…/v1 is the OpenAI-compatible root)."""
    import ray
    from ray import serve

    from mmc_ray.config.adapter_names import parse_adapter_specs
    from mmc_ray.ray_runtime import init_ray
    from mmc_ray.serve.adapter_state import ServedAdapters
    from mmc_ray.serve.adapter_store import needs_zero_base, published_critic
    from mmc_ray.serve.app import build_critic_app
    from mmc_ray.serve.checkpoints import registry

    init_ray()
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{route_prefix.rstrip('/')}"
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    fingerprint = str(stable_hash(dataclasses.replace(cfg.serve, checkpoint=""), cfg.critic, route_prefix))
    checkpoints = registry()
    current = ray.get(checkpoints.get.remote(app_name))
    app = serve.status().applications.get(app_name)
    same_app = app is not None and app.status == "RUNNING" and current.get("fingerprint") == fingerprint
    if cfg.serve.backend == "hf" and same_app:
        ray.get(checkpoints.set.remote(app_name, cfg.serve.checkpoint))
        return url
    # Set first: replicas of the new deployment must not follow a checkpoint (or adapters) left from
    # an older one.
    ray.get(checkpoints.set.remote(app_name, cfg.serve.checkpoint, fingerprint, cfg.serve.backend))
    critic, store = cfg.critic, ""
    if cfg.serve.backend == "vllm" and cfg.serve.adapter_store:
        critic, store = published_critic(cfg.serve, cfg.critic), cfg.serve.adapter_store
    served = ServedAdapters(parse_adapter_specs(critic.adapters), {}, critic.adapter)
    ray.get(checkpoints.reset_adapters.remote(app_name, served, store, needs_zero_base(store, critic.device)))
    serve.run(build_critic_app(cfg.serve, critic), name=app_name, route_prefix=route_prefix)
    return url
