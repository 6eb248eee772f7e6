"""``CandidatesConfig``: the ``candidates:`` section of a pipeline YAML.

Only pydantic here (no polars, Ray or annoy), so that ``recemb.config`` can
import it cheaply; the job itself is :mod:`recemb.retrieval.candidates`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recemb.data.repeats import ExcludeSeen
from recemb.section import Section


class CandidatesConfig(Section):
    """The ``candidates:`` section: batch top-k for every user."""

    k: int = Field(100, ge=1)  # candidates per user
    sources: list[str] = Field(default_factory=list)  # index names under <run>/index/; empty = all
    # {source: count} or {source: fraction of k}; None = k split evenly (Retriever's rule)
    quotas: dict[str, int | float] | None = None
    # {source: weight}: fuse the sources by weighted reciprocal rank instead of quotas (recemb.retrieval.blend)
    weights: dict[str, float] | None = None
    query: Literal["last", "mean", "mean_last_n", "recency"] = "mean_last_n"
    last_n: int = Field(5, ge=1)  # window of query=mean_last_n
    # never return an item of the user's history; auto: when under 5% of events repeat one
    # (recemb.data.repeats, counted on the events the histories come from); forced off for sess
    exclude_seen: ExcludeSeen = "auto"
    blocked: list[str] = Field(default_factory=list)  # item ids never returned to anyone
    user_vectors: bool = True  # use <run>/<model>/user_embeddings as the query of known users
    # a user tower encodes every history for its model's index (as serve.user_tower does online);
    # none: such an index is queried by pooling its item vectors
    user_tower: Literal["none", "two_tower", "sequence"] = "none"
    holdout: Literal["none", "ml", "sess"] = "none"  # see recemb.eval.holdout_queries
    search_k: int | None = None  # Annoy search_k; None = the index manifest's
    partitions: int = Field(16, ge=1)  # fixed output partitions (part files)
    batch_size: int = Field(1024, ge=1)  # users per Retriever call inside a partition
    num_workers: int = Field(1, ge=0)  # Ray Data actors; 0 = in this process, no Ray
    cpus_per_worker: float = Field(0.5, gt=0)  # fractional: workers share cores with the rest
    verify: bool = True  # sha256 of indexes and EmbeddingSets once on the driver
    out: str | None = None  # output directory; default <run>/candidates
