"""Which LoRA adapters a critic app serves, and how its replicas swap them while answering.

An app's adapters are versions under immutable names ("critic-r1", "critic-r2") and aliases that point
at them ("critic"). A new round is swapped in by loading its version, moving the alias, then unloading
the old version (`mmc-ray adapters`): the record (`ServedAdapters`) lives in the checkpoint registry and
every replica follows it. A replica unloads a version only once no request in flight holds it
(`ServedNames`), so a swap under load fails no request. Kept free of Ray: the rules are testable alone.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from mmc_ray.config.adapter_names import BASE_MODEL, check_adapter_name
from mmc_ray.errors import BadInput
from mmc_ray.serve.protocol import requested_adapter


@dataclass(frozen=True)
class ServedAdapters:
    """The adapters an app should serve: versions (name → folder) and aliases (alias → version);
    `default`, the engine's default adapter, answers requests that name none and is never unloaded."""

    paths: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    default: str = BASE_MODEL

    def changed(self, load: Mapping[str, str] | None = None, aliases: Mapping[str, str] | None = None,
                unload: Sequence[str] = ()) -> ServedAdapters:
        """The record after loading `load`, pointing `aliases`, then unloading `unload` (versions or
        aliases); a change that would break a request is refused whole with the reason."""
        paths, pointed = dict(self.paths), dict(self.aliases)
        for name, path in (load or {}).items():
            check_adapter_name(name)
            if name in pointed:
                raise BadInput(f"{name!r} is an alias; load the adapter under a version name of its own")
            if paths.get(name, path) != path:
                raise BadInput(f"adapter {name!r} is loaded from {paths[name]} already: names are immutable "
                               "versions (a reloaded name can be answered from stale caches); load a new "
                               "name and move an alias to it")
            paths[name] = str(path)
        for alias, target in (aliases or {}).items():
            check_adapter_name(alias)
            if alias in paths:
                raise BadInput(f"{alias!r} is an adapter version; an alias needs a name of its own")
            if target not in paths:
                raise BadInput(f"alias {alias!r} → {target!r}: no such adapter; loaded: {_listed(paths)}")
            pointed[alias] = target
        for name in unload:
            if name in pointed:
                del pointed[name]
            elif name not in paths:
                raise BadInput(f"cannot unload {name!r}: not loaded; loaded: {_listed(paths)}")
            elif name == self.default:
                raise BadInput(f"cannot unload {name!r}: it is the engine's default adapter (critic.adapter)")
            elif users := sorted(a for a, t in pointed.items() if t == name):
                raise BadInput(f"cannot unload {name!r}: alias {', '.join(users)} points at it; "
                               "move it first")
            else:
                del paths[name]
        return ServedAdapters(paths, pointed, self.default)


def _listed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


class ServedNames:
    """A replica's view of the model names it answers to: the adapter versions its engine holds and
    the aliases, with the requests in flight on each version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: set[str] = set()
        self._aliases: dict[str, str] = {}
        self._in_flight: collections.Counter[str] = collections.Counter()

    def names(self) -> list[str]:
        """Every adapter name a request may give: the versions, then the aliases."""
        with self._lock:
            return [*sorted(self._loaded), *self._aliases]

    def aliases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._aliases)

    def follow(self, loaded: Iterable[str], aliases: Mapping[str, str]) -> None:
        """The engine now holds `loaded`; `aliases` point at some of them (others are left out)."""
        with self._lock:
            self._loaded = set(loaded)
            self._aliases = {a: t for a, t in aliases.items() if t in self._loaded}

    @contextlib.contextmanager
    def holding(self, model: str | None, served: str) -> Iterator[str | None]:
        """The adapter version a request's `model` names (an alias resolved; None: the default),
        not unloaded before the block ends; an unknown name is a 404 (`requested_adapter`)."""
        with self._lock:
            named = requested_adapter(model, served, [*self._loaded, *self._aliases])
            version = self._aliases.get(named, named) if named else None
            if version:
                self._in_flight[version] += 1
        try:
            yield version
        finally:
            if version:
                with self._lock:
                    self._in_flight[version] -= 1

    def retire(self, name: str) -> bool:
        """Stop answering to version `name` when no request holds it and no alias points at it; True
        then (the engine may unload it), False to try again later."""
        with self._lock:
            if self._in_flight[name] or name in self._aliases.values():
                return False
            self._loaded.discard(name)
            return True
