"""LoRA adapters on the HF engine's one loaded base model (PEFT), one active per batch.

PEFT injects each adapter's layers into the base model in place, so the engine keeps calling its
model; which adapter those layers apply is switched per batch (the engine groups requests by
adapter). Loading and unloading change the model's modules, so they wait for the forward passes in
other threads (a server loads new versions while it answers) and those wait for them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from mmc_ray.config.adapter_names import BASE_MODEL
from mmc_ray.models.adapters import AdapterSet


class PeftAdapters(AdapterSet):
    def __init__(self, model: Any) -> None:
        super().__init__(getattr(model, "name_or_path", ""))
        self._model = model
        self._peft: Any = None  # the PeftModel wrapping `model`, from the first load on
        self._model_lock = threading.RLock()

    def _attach(self, name: str, path: str, config: Mapping[str, object]) -> None:
        import peft

        with self._model_lock:
            if self._peft is None:
                self._peft = peft.PeftModel.from_pretrained(self._model, path, adapter_name=name)
            else:
                self._peft.load_adapter(path, adapter_name=name)
            self._peft.eval()

    def _detach(self, name: str) -> None:
        with self._model_lock:
            self._peft.delete_adapter(name)

    @contextlib.contextmanager
    def active(self, name: str) -> Iterator[None]:
        """The model applies adapter `name` (the base model alone for BASE_MODEL) inside the block."""
        with self._model_lock:
            if name != BASE_MODEL:
                self._peft.set_adapter(name)
                yield
            elif self._peft is None:
                yield
            else:
                with self._peft.disable_adapter():
                    yield
