"""Candidate retrieval over one or more (EmbeddingSet, Index) sources (DESIGN.md §6)."""

from recemb.retrieval.retriever import QUERY_MODES, Retriever, Source

__all__ = ["QUERY_MODES", "Retriever", "Source"]
