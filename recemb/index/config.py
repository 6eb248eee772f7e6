"""The ``export:`` section: index export of a run's EmbeddingSets, and the co-visitation source."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recemb.section import Section


class CoVisitConfig(Section):
    """``export.covisit``: the co-visitation source built from the prepared events (recemb.retrieval.covisit)."""

    enabled: bool = True  # write <run>/index/covisit/ beside the embedding indexes
    unit: Literal["auto", "user", "session"] = "auto"  # auto: sessions when every event has one, else users
    top_m: int = Field(100, ge=1)  # neighbours kept per item
    query: Literal["last", "mean", "mean_last_n", "recency"] = "recency"  # weights of a history's items


#: ``export.backend: auto`` picks HNSW from this many items up (Annoy's recall/speed falls off there).
HNSW_FROM = 100_000


class HnswConfig(Section):
    """``export.hnsw``: the graph of ``export.backend: hnsw`` (recemb.index.hnsw_index)."""

    m: int = Field(16, ge=2, le=256)  # links per element (2m on the bottom level): recall and memory grow with it
    ef_construction: int = Field(100, ge=1)  # build breadth: a better graph for a slower build


class ExportConfig(Section):
    """Export of the run's EmbeddingSets to indexes (recemb.index.stage): Annoy, HNSW or exact."""

    n_trees: int = Field(50, ge=1)
    metric: Literal["cosine", "dot", "euclidean"] | None = None  # None: the EmbeddingSet's own
    search_k: int = -1  # default search_k stored in the manifest (-1: annoy's n_trees * k)
    sample: int = Field(1000, ge=0)  # items whose recall@10 against exact search is measured
    # Certified recall@10 on held-out queries: export finds the cheapest search_k that meets it and
    # records it for every load; an index that cannot meet it is refused (None: no certification).
    recall_target: float | None = Field(0.95, gt=0, le=1)
    accept_lower_recall: bool = False  # record the best recall reached instead of refusing the export
    # Which EmbeddingSets: names of <run>/<name>/embeddings; empty = every one in the run.
    models: list[str] = Field(default_factory=list)
    covisit: CoVisitConfig = CoVisitConfig()
    # annoy: approximate forest (recall-certified); hnsw: approximate graph (recall-certified, items
    # can be added and removed while it serves; the pick past ~100k items); exact: blocked exact
    # search, over float32 or compressed vectors (codec float16 / int8 with a per-row scale) with
    # a float32 re-rank of the best `rerank`
    backend: Literal["auto", "annoy", "hnsw", "exact"] = "auto"  # auto: annoy below HNSW_FROM items, else hnsw
    hnsw: HnswConfig = HnswConfig()
    codec: Literal["float32", "float16", "int8"] = "float32"
    rerank: int = Field(100, ge=0)
