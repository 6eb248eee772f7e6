"""What a pipeline stage is: a function of the config plus the config sections it reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: the name in ``stages:`` and in ``<run>/stages/<name>.json``.
        run: ``(cfg, force, **extra) -> summary`` (a JSON-ready dict).
        sections: the config sections whose values decide its output (its fingerprint).
        help: one line for listings.
    """

    name: str
    run: Callable[..., dict[str, Any]]
    sections: tuple[str, ...]
    help: str = ""
