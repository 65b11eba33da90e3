"""Stable seeds from ids: the same parts give the same number in every process and run (Python's
`hash` is salted per process), so results never depend on batch order or worker placement."""

from __future__ import annotations

import hashlib


def stable_hash(*parts: object, nbytes: int = 8) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:nbytes], "little")


def stable_seed(*parts: object) -> int:
    """A 32-bit seed (what torch, numpy and engines accept everywhere)."""
    return stable_hash(*parts, nbytes=4)


def stable_unit(*parts: object) -> float:
    """A number in [0, 1), uniform over ids."""
    return stable_hash(*parts) / 2**64
