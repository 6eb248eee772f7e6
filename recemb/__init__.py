"""recemb: an embedding engine for recommender systems.

Layers (a lower one never imports a higher one)::

    data (polars, parquet) -> models + training -> EmbeddingSet artifacts
    -> index (annoy) -> retrieval -> evaluation
"""

__version__ = "0.1.0"
