"""Adapters for Ray Serve LLM (serve.backend=vllm), which loads a LoRA adapter only from a cloud folder:
`LLMConfig.lora_config.dynamic_lora_loading_path` holds one subfolder per adapter, and a request
for `<served_model>:<subfolder>` makes a replica download it and load it into vLLM (least recently
used adapters are evicted past `max_num_adapters_per_replica`).

`publish` copies an exported adapter folder to `<serve.adapter_store>/<name>/` through pyarrow's
filesystems (S3 honours AWS_ENDPOINT_URL, so an S3-compatible server on 127.0.0.1 works the same).
Names are immutable versions: publishing a name again with other weights is refused, since replicas
that already hold the name would go on answering with the old ones.

On vLLM's CPU build a request without an adapter, batched beside adapter requests, gets an adapter
applied (vllm-project/vllm PR #48421; see `mmc_ray.engines.vllm.VLLMAdapters`). There the base is
published too, as a zero adapter (`ZERO_BASE`: B matrices zero, it changes nothing), and requests for
the base go through it.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from mmc_ray.config import EngineConfig, ServeConfig
from mmc_ray.config.adapter_names import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    check_adapter_name,
    parse_adapter_specs,
)
from mmc_ray.errors import BadInput, MissingInput

ZERO_BASE = "zero-base"  # a subfolder name; the record never holds it, so a user name cannot clash


def adapter_uri(store: str, name: str) -> str:
    return f"{store.rstrip('/')}/{name}"


def _weights_digest(read: bytes) -> str:
    return hashlib.sha256(read).hexdigest()


def _published_digest(uri: str) -> str | None:
    """sha256 of the weights already at `uri`, None when nothing is there."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(f"{uri}/{ADAPTER_WEIGHTS}")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        return _weights_digest(stream.read())


def _published(uri: str) -> bool:
    """Whether an adapter's weights are at `uri` (its metadata only: nothing is downloaded)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(f"{uri}/{ADAPTER_WEIGHTS}")
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def needs_zero_base(store: str, device: str) -> bool:
    """Whether the base is served through the store's zero adapter: adapters from a store, on vLLM's
    CPU build (the bug above)."""
    return bool(store) and device == "cpu"


def _copy(folder: Path, uri: str) -> None:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        fs.create_dir(path, recursive=True)  # a local store needs the folder; on S3 it is a marker
        pafs.copy_files(str(folder.resolve()), path, destination_filesystem=fs)
    except OSError as e:  # no such bucket, no credentials, the endpoint down: say where it went
        raise MissingInput(f"could not copy adapter {folder} to {uri}: {e}") from e


def publish(store: str, name: str, folder: str | Path) -> str:
    """Copy adapter `folder` to `store`/`name` (nothing to do when the same weights are there);
    returns its URI."""
    check_adapter_name(name)
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise MissingInput(f"adapter {name}: {folder} is not an exported adapter (needs {ADAPTER_CONFIG} and "
                           f"{ADAPTER_WEIGHTS})")
    return _publish_as(store, name, folder, what=f"adapter {name!r}")


def _publish_as(store: str, subfolder: str, folder: Path, what: str) -> str:
    uri = adapter_uri(store, subfolder)
    there = _published_digest(uri)
    if there is None:
        _copy(folder, uri)
    elif there != _weights_digest((folder / ADAPTER_WEIGHTS).read_bytes()):
        raise BadInput(f"{what}: {uri} holds other weights already; names are immutable versions (replicas "
                       "that loaded it would keep the old weights): publish under a new name")
    return uri


def publish_all(store: str, adapters: Mapping[str, str], zero_base: bool) -> dict[str, str]:
    """`publish` each NAME → folder (a value already under `store` is taken as published); with
    `zero_base`, also the base's stand-in from the first adapter. Returns NAME → URI."""
    inside = store.rstrip("/") + "/"
    uris = {name: path if path.startswith(inside) else publish(store, name, path)
            for name, path in adapters.items()}
    local = next((Path(p) for p in adapters.values() if not p.startswith(inside)), None)
    zero = adapter_uri(store, ZERO_BASE)
    if zero_base and adapters and not _published(zero):  # any zero adapter will do
        if local is None:
            raise MissingInput(f"on CPU the base is served through a zero adapter at {zero}, made from a "
                               "local adapter: give one adapter as a local folder")
        from mmc_ray.engines.vllm import zero_adapter

        with tempfile.TemporaryDirectory(prefix="mmc-zero-base-") as scratch:
            _copy(Path(zero_adapter(local, scratch)), zero)
    return uris


def published_critic(serve_cfg: ServeConfig, engine_cfg: EngineConfig) -> EngineConfig:
    """`engine_cfg` with its adapters published to `serve.adapter_store` and named by their URIs
    there (publishing it again does nothing)."""
    uris = publish_all(serve_cfg.adapter_store, parse_adapter_specs(engine_cfg.adapters),
                       zero_base=needs_zero_base(serve_cfg.adapter_store, engine_cfg.device))
    return replace(engine_cfg, adapters=tuple(f"{name}={uri}" for name, uri in uris.items()))
