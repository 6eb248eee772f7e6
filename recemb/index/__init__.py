"""Top-k indexes over EmbeddingSet vectors: exact and Annoy, plus safe export/load (DESIGN.md §5, §6)."""

from recemb.index.base import METRICS, Index, RecembIndexError
from recemb.index.exact import ExactIndex

__all__ = [
    "METRICS",
    "AnnoyIndex",
    "ExactIndex",
    "Index",
    "RecembIndexError",
    "export_all",
    "export_index",
    "load_index",
]


def __getattr__(name: str):
    # annoy is an optional extra (recemb[index]): import it only when asked for.
    if name == "AnnoyIndex":
        from recemb.index.annoy_index import AnnoyIndex

        return AnnoyIndex
    if name in ("export_index", "load_index", "export_all"):
        from recemb.index import export

        return getattr(export, name)
    raise AttributeError(f"module 'recemb.index' has no attribute {name!r}")
