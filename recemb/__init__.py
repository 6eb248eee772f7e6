"""recemb: an embedding engine for recommender systems.

Layers (a lower one never imports a higher one)::

    data (polars, parquet) -> models + training -> EmbeddingSet artifacts
    -> index (annoy) -> retrieval -> evaluation
"""

import os

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning. torch's CPU kernels (and the Ray workers a
# local Ray starts from this process, which inherit the environment) otherwise spin-wait
# between ops: on 2 shared cores a small two-tower fit measured 8-11 s spinning against
# 0.9-1.0 s sleeping, and item2vec's numba kernel ran at the same speed either way.
# It must be set before torch loads its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
