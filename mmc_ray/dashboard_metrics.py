"""Stage metrics exported through `ray.util.metrics` (Ray dashboard / Prometheus) when Ray is
running; without Ray they are no-ops, so pure runs and tests need nothing."""

from __future__ import annotations

from typing import Any


class StageMetrics:
    """Counters and gauges of one stage, named `mmc_<stage>_<name>`."""

    def __init__(self, stage: str, counters: tuple[str, ...], gauges: tuple[str, ...]) -> None:
        self._metrics: dict[str, Any] = {}
        try:
            import ray
            from ray.util.metrics import Counter, Gauge
        except ImportError:
            return
        if not ray.is_initialized():
            return
        for name in counters:
            self._metrics[name] = Counter(f"mmc_{stage}_{name}", description=f"{stage}: {name}")
        for name in gauges:
            self._metrics[name] = Gauge(f"mmc_{stage}_{name}", description=f"{stage}: {name}")

    @property
    def enabled(self) -> bool:
        return bool(self._metrics)

    def inc(self, name: str, value: float = 1.0) -> None:
        if name in self._metrics and value > 0:
            self._metrics[name].inc(value)

    def set(self, name: str, value: float) -> None:
        if name in self._metrics:
            self._metrics[name].set(value)
