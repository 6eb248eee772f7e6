"""The ``report:`` section of the pipeline YAML (stage ``report``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recemb.section import Section


class ReportConfig(Section):
    """What `recemb report` draws into ``<run>/report.html`` and exports for the projector."""

    # 2-D map of item embeddings: "auto" = t-SNE when scikit-learn is installed
    # and the set has at most tsne_max_items rows, else PCA (numpy SVD).
    projection: Literal["auto", "pca", "tsne"] = "auto"
    tsne_max_items: int = Field(2000, ge=10)
    map_max_items: int = Field(5000, ge=10)  # larger sets are subsampled for the map
    examples: int = Field(6, ge=0)  # popular items shown with their nearest neighbours
    neighbours: int = Field(5, ge=1, le=50)
    thumbnail_px: int = Field(48, ge=8, le=256)
    latency_queries: int = Field(200, ge=0)  # single-item queries timed per ANN index (0: skip)
    projector: bool = True  # also write <run>/projector/<model>/ for the TensorBoard projector
    seed: int = 0
