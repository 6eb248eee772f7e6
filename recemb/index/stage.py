"""The export stage: every EmbeddingSet of a run -> ``<run>/index/<model>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recemb.embeddings import find_embedding_sets
from recemb.errors import ConfigError
from recemb.index.config import ExportConfig
from recemb.index.export import export_all


def export_run(run_dir: str | Path, section: ExportConfig | None = None) -> dict[str, dict[str, Any]]:
    """Export the EmbeddingSets of ``run_dir`` (``section.models``, or all); returns ``{model: manifest}``."""
    run_dir, e = Path(run_dir), section or ExportConfig()
    found = find_embedding_sets(run_dir)
    wanted = e.models or list(found)
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ConfigError(
            f"export.models: no EmbeddingSet for {missing} under {run_dir} "
            f"(found {sorted(found) or 'none'}); train those models first"
        )
    if not wanted:
        raise ConfigError(
            f"export: {run_dir} holds no EmbeddingSet (<run>/<model>/embeddings); "
            f"train a model first, e.g. `recemb train item2vec CONFIG`"
        )
    return export_all(
        {m: found[m] for m in wanted},
        run_dir,
        n_trees=e.n_trees,
        metric=e.metric,
        search_k=e.search_k,
        sample=e.sample,
    )
