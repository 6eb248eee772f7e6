"""Candidate retrieval over one or more (EmbeddingSet, Index) sources (DESIGN.md §6).

The heavy parts load on first use, so that reading a config (which imports
the ``serve:`` section from here) stays fast.
"""

__all__ = ["QUERY_MODES", "Retriever", "Source"]

_LAZY = {"Retriever": "retriever", "Source": "retriever", "QUERY_MODES": "query"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
