"""Candidate retrieval over one or more (EmbeddingSet, Index) sources (DESIGN.md §6).

- :mod:`.query`              ``QUERY_MODES``: a user history -> a query vector
- :mod:`.retriever`          ``Retriever`` over ``Source`` s: query, filter, blend, top-up
- :mod:`.candidates`         the batch candidate job (Ray Data)
- :mod:`.candidates_config`, :mod:`.serve_config`  the ``candidates:`` and ``serve:`` sections
"""
