"""One live line for the three stages of a streamed round, which run at once on their own threads:
trees searched (the bar), critiques written, and the critic's train step and loss."""

from __future__ import annotations

import threading
from typing import Any

from tqdm import tqdm


class RoundProgress:
    """The search's progress line (`update`, `set_postfix`, as tqdm), with annotation and training
    reporting beside it. Thread-safe; every call redraws at most as often as tqdm does."""

    def __init__(self, trees: int, train_steps: int, enabled: bool = True) -> None:
        self._bar = tqdm(total=trees, desc="round", unit="tree", disable=not enabled)
        self._lock = threading.Lock()
        self._fields: dict[str, Any] = {"critiques": 0, "drops": 0, "step": f"0/{train_steps}"}
        self._train_steps = train_steps

    def update(self, n: int = 1) -> None:
        with self._lock:
            self._bar.update(n)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **values: Any) -> None:
        with self._lock:
            self._fields.update(ordered_dict or {}, **values)
            self._bar.set_postfix(self._fields, refresh=refresh)

    def outcomes(self, critiques: int, drops: int) -> None:
        with self._lock:  # read and add under one lock: counts from any thread add up
            self._fields["critiques"] += critiques
            self._fields["drops"] += drops
            self._bar.set_postfix(self._fields)

    def train_step(self, values: dict[str, float]) -> None:
        self.set_postfix(step=f"{int(values['step'])}/{self._train_steps}", loss=f"{values['loss']:.3f}")

    @property
    def fields(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._fields)

    def close(self) -> None:
        with self._lock:
            self._bar.close()
