"""Names of LoRA adapters and the `NAME=PATH` specs that load them (engine config `adapters`,
`mmc-ray serve --adapter`); `BASE_MODEL` ("") names the base model itself."""

from __future__ import annotations

import re
from collections.abc import Iterable

from mmc_ray.errors import BadInput

BASE_MODEL = ""
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadInput(f"adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                       "letter or digit")
    return name


def parse_adapter_specs(specs: Iterable[str]) -> dict[str, str]:
    """`NAME=PATH` entries (config `adapters`, `serve --adapter`) → {name: path}, in order."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = str(spec).partition("=")
        if not sep or not path:
            raise BadInput(f"adapter {spec!r}: expected NAME=PATH (a folder with {ADAPTER_CONFIG})")
        if check_adapter_name(name) in adapters:
            raise BadInput(f"adapter name {name!r} is given twice")
        adapters[name] = path
    return adapters


