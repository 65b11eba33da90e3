"""Which critic checkpoint each served app should run: a small named Ray actor that every replica
watches. Setting a new checkpoint swaps it on all replicas in place (each loads the new critic,
then switches; requests in flight finish on the old one), without redeploying the app.

Serve's own `user_config` does the same for `serve deploy` / RayService configs, where a changed
`user_config` is a lightweight update; a Python `serve.run` instead replaces every replica, so
`mmc_ray.serve.deploy` goes through this registry when only the checkpoint changes.

Apps on the vllm backend (`mmc_ray.serve.llm`) swap by redeploying instead; for them the registry
only numbers the checkpoints each app has served (`version`), which `/v1/models` reports.
"""

from __future__ import annotations

from typing import Any

import ray

from mmc_ray.errors import UserError

REGISTRY_NAME = "mmc-ray-critic-checkpoints"
NAMESPACE = "mmc-ray"


@ray.remote(num_cpus=0)
class CheckpointRegistry:
    def __init__(self) -> None:
        self._apps: dict[str, dict[str, Any]] = {}

    def set(self, app: str, checkpoint: str, fingerprint: str = "", backend: str = "") -> None:
        entry = self._apps.setdefault(app, {})
        entry["checkpoint"] = checkpoint
        if fingerprint:
            entry["fingerprint"] = fingerprint
        if backend:
            entry["backend"] = backend
        self.version(app, checkpoint)

    def get(self, app: str) -> dict[str, Any]:
        return {k: v for k, v in self._apps.get(app, {}).items() if k != "seen"}

    def version(self, app: str, checkpoint: str) -> int:
        """The 1-based number of `checkpoint` among those `app` has served, in first-seen order."""
        seen: list[str] = self._apps.setdefault(app, {}).setdefault("seen", [])
        if checkpoint not in seen:
            seen.append(checkpoint)
        return seen.index(checkpoint) + 1


def registry() -> Any:
    """The cluster's registry actor (created, detached, on first use)."""
    return CheckpointRegistry.options(name=REGISTRY_NAME, namespace=NAMESPACE, lifetime="detached",
                                      get_if_exists=True).remote()


def swap_checkpoint(app: str, checkpoint: str) -> None:
    """Point every replica of `app` at `checkpoint` (they pick it up within a second or so)."""
    checkpoints = registry()
    if ray.get(checkpoints.get.remote(app)).get("backend") == "vllm":
        raise UserError(f"app {app} runs the vllm backend, which swaps by redeploying: run "
                           f"`mmc-ray serve --detach --checkpoint {checkpoint}` with its config")
    ray.get(checkpoints.set.remote(app, checkpoint))
