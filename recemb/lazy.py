"""Lazy package exports: heavy submodules (torch, torchrec, matplotlib) load on first use.

Reading a config imports every section's package, and the CLI reads one at
each start; a package whose ``__init__`` imported its trainer would make
``recemb --help`` take seconds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``package.<where[name]>`` when ``name`` is first used."""

    def __getattr__(name: str) -> object:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
