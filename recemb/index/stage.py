"""The export stage: every EmbeddingSet of a run -> ``<run>/index/<model>/``."""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.embeddings import find_embedding_sets
from recemb.errors import ConfigError
from recemb.index.export import export_all


def export_run(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Export the run's EmbeddingSets (``cfg.export.models``, or all); returns ``{model: manifest}``."""
    found = find_embedding_sets(cfg.run_dir)
    wanted = cfg.export.models or list(found)
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ConfigError(
            f"export.models: no EmbeddingSet for {missing} under {cfg.run_dir} "
            f"(found {sorted(found) or 'none'}); train those models first"
        )
    if not wanted:
        raise ConfigError(
            f"export: {cfg.run_dir} holds no EmbeddingSet (<run>/<model>/embeddings); "
            f"train a model first, e.g. `recemb train item2vec CONFIG`"
        )
    e = cfg.export
    return export_all(
        {m: found[m] for m in wanted},
        cfg.run_dir,
        n_trees=e.n_trees,
        metric=e.metric,
        search_k=e.search_k,
        sample=e.sample,
    )
