"""Candidate retrieval over one or more (EmbeddingSet, Index) sources (DESIGN.md §6).

The heavy parts load on first use, so that reading a config (which imports
the ``serve:`` section from here) stays fast.
"""

__all__ = ["QUERY_MODES", "Retriever", "Source"]

from recemb.lazy import lazy_exports  # noqa: E402

_LAZY = {"Retriever": "retriever", "Source": "retriever", "QUERY_MODES": "query"}


__getattr__ = lazy_exports(__name__, _LAZY)
