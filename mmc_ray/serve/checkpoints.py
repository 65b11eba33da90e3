"""Which critic checkpoint each served app should run, and which LoRA adapters: a small named Ray
actor that every replica watches. Setting a new checkpoint swaps it on all replicas in place (each
loads the new critic, then switches; requests in flight finish on the old one), without redeploying
the app; so does changing its adapters (`change_adapters`, rules in `mmc_ray.serve.adapter_state`).

Serve's own `user_config` does the same for `serve deploy` / RayService configs, where a changed
`user_config` is a lightweight update; a Python `serve.run` instead replaces every replica, so
`mmc_ray.serve.deploy` goes through this registry when only the checkpoint changes.

Apps on the vllm backend (`mmc_ray.serve.llm`) swap checkpoints by redeploying instead (the registry
numbers the checkpoints each app has served, `version`, which `/v1/models` reports); their adapters
change through the registry as on hf, from the app's adapter store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray

from mmc_ray.errors import UserError
from mmc_ray.serve.adapter_state import ServedAdapters

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

    def reset_adapters(self, app: str, served: ServedAdapters, store: str = "",
                       zero_base: bool = False) -> None:
        """A new deployment of `app` serves `served` (its config's adapters); backend vllm: from the
        adapter `store`, base requests through the zero adapter there when `zero_base` (vLLM on CPU)."""
        self._apps.setdefault(app, {}).update(adapters=served, adapter_store=store, zero_base=zero_base)

    def change_adapters(self, app: str, load: Mapping[str, str], aliases: Mapping[str, str],
                        unload: Sequence[str]) -> ServedAdapters:
        entry = self._apps.get(app, {})
        if "adapters" not in entry:
            raise UserError(f"no app {app!r} deployed by mmc-ray serve on this cluster")
        entry["adapters"] = entry["adapters"].changed(load, aliases, unload)
        return entry["adapters"]

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


def _registry_of_hf_app(app: str, on_vllm: str) -> Any:
    """The registry, once it says `app` runs the hf backend (else `on_vllm` as the user's error)."""
    checkpoints = registry()
    if ray.get(checkpoints.get.remote(app)).get("backend") == "vllm":
        raise UserError(f"app {app} runs the vllm backend, {on_vllm}")
    return checkpoints


def swap_checkpoint(app: str, checkpoint: str) -> None:
    """Point every replica of `app` at `checkpoint` (they pick it up within a second or so)."""
    checkpoints = _registry_of_hf_app(app, f"which swaps by redeploying: run `mmc-ray serve --detach "
                                           f"--checkpoint {checkpoint}` with its config")
    ray.get(checkpoints.set.remote(app, checkpoint))


def change_adapters(app: str, load: Mapping[str, str] | None = None, aliases: Mapping[str, str] | None = None,
                    unload: Sequence[str] = ()) -> ServedAdapters:
    """Load adapter versions, point aliases, unload versions (or aliases) on every replica of `app`,
    in that order, without a redeploy; returns the app's adapters after the change. Replicas follow
    within `serve.checkpoint_poll_s`, each unloading a version once no request holds it. Backend
    vllm: each loaded folder is first copied to the app's adapter store (`mmc_ray.serve.adapter_store`);
    Ray Serve LLM's replicas load a version at its first request and evict the least used."""
    checkpoints = registry()
    entry = ray.get(checkpoints.get.remote(app))
    load = dict(load or {})
    if entry.get("backend") == "vllm" and load:
        from mmc_ray.serve.adapter_store import publish_all

        if not entry.get("adapter_store"):
            raise UserError(f"app {app} runs the vllm backend without serve.adapter_store: Ray Serve LLM "
                            "loads adapters from cloud storage only; redeploy it with one")
        load = publish_all(entry["adapter_store"], load, entry.get("zero_base", False))
    try:
        return ray.get(checkpoints.change_adapters.remote(app, load, dict(aliases or {}), list(unload)))
    except ray.exceptions.RayTaskError as e:  # a refused change: the reason, not an actor traceback
        raise e.cause from None
