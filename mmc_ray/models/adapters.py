"""LoRA adapters on a base model: their names, their folders, and the check that an adapter was
trained on the base an engine loads it onto.

An adapter is chosen by name, per request (names and `NAME=PATH` specs: `config/adapter_names.py`).
Names are immutable versions ("critic-r2"): a server moves an alias instead of reloading a name, because a
reloaded name can be served from stale prefix-cache entries (vLLM keys its cache by adapter).
An export (`train/lora.py`) writes a manifest beside the adapter with the base's weight hash; an
engine refuses an adapter whose manifest names another base, since PEFT and vLLM load it anyway
and answer with garbage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from mmc_ray.config.adapter_names import ADAPTER_CONFIG, BASE_MODEL, check_adapter_name
from mmc_ray.errors import BadInput, MissingInput

MANIFEST = "adapter_manifest.json"


def base_hash(model_dir: str | Path) -> str:
    """One sha256 over a model folder's weight files (names and bytes, in name order): the identity of
    the base an adapter was trained on."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def check_adapter_folder(path: str | Path, base_sha256: str | None) -> Mapping[str, object]:
    """The folder's adapter config, after checking it is a LoRA adapter and, when it has our manifest,
    that it was trained on the base whose `base_hash` is `base_sha256` (None: do not check)."""
    folder = Path(path)
    config_file = folder / ADAPTER_CONFIG
    if not config_file.is_file():
        raise MissingInput(f"{folder} is not an adapter folder: it has no {ADAPTER_CONFIG}")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise BadInput(f"{folder}: peft_type {config.get('peft_type')!r}; only LoRA adapters are served")
    manifest_file = folder / MANIFEST
    if base_sha256 is not None and manifest_file.is_file():
        trained_on = json.loads(manifest_file.read_text()).get("base_sha256")
        if trained_on != base_sha256:
            raise BadInput(f"{folder} was trained on another base model (its manifest's base_sha256 "
                           f"{str(trained_on)[:12]}… is not this model's {base_sha256[:12]}…)")
    return config


class AdapterSet:
    """The adapters an engine has loaded on its one base model, by name. Subclasses attach an adapter
    to their engine (`_attach`) and detach it (`_detach`); the checks are here."""

    def __init__(self, base_dir: str | Path | None) -> None:
        self._base_dir = str(base_dir or "")
        self._base_sha256: str | None = None
        self.paths: dict[str, str] = {}

    def load(self, name: str, path: str | Path) -> None:
        check_adapter_name(name)
        if name in self.paths:
            raise BadInput(f"adapter {name!r} is loaded already (from {self.paths[name]}); load a new "
                           "version under a new name")
        config = check_adapter_folder(path, self._base_hash())
        self._attach(name, str(path), config)
        self.paths[name] = str(path)

    def unload(self, name: str) -> None:
        if name not in self.paths:
            raise BadInput(f"adapter {name!r} is not loaded; loaded: {', '.join(self.paths) or 'none'}")
        self._detach(name)
        del self.paths[name]

    def require(self, name: str) -> str:
        """`name` when a request can use it (BASE_MODEL: the base itself), else a ValueError, which
        fails the one request that named it."""
        if name != BASE_MODEL and name not in self.paths:
            raise ValueError(f"unknown adapter {name!r}; loaded: {', '.join(self.paths) or 'none'}")
        return name

    def _attach(self, name: str, path: str, config: Mapping[str, object]) -> None:
        raise NotImplementedError

    def _detach(self, name: str) -> None:
        raise NotImplementedError

    def _base_hash(self) -> str | None:
        """The base folder's `base_hash` (computed once); None when the base is not a local folder."""
        if self._base_sha256 is None and self._base_dir and Path(self._base_dir).is_dir():
            self._base_sha256 = base_hash(self._base_dir)
        return self._base_sha256
