"""Candidate retrieval over one or more sources (DESIGN.md §6, docs/candidates.md).

- :mod:`.sources`            ``EmbeddingSource`` (item vectors + index), ``CoVisitSource``; ``load_source``
- :mod:`.covisit`            the co-visitation table: build, save, checked load, score a history
- :mod:`.blend`              the one blending core: filter, fuse (or quotas), popularity top-up
- :mod:`.retriever`          ``Retriever``: every source searched once per call, then the core per user
- :mod:`.towers`             user towers (two-tower, sequence) as query encoders
- :mod:`.candidates`         the batch candidate job (Ray Data)
- :mod:`.candidates_config`, :mod:`.serve_config`  the ``candidates:`` and ``serve:`` sections
"""
