"""Open any exported index directory by its manifest's ``kind``, and describe one in a line.

=====  ==========================================  ===================================
kind   written by                                  opened (checked) by
=====  ==========================================  ===================================
annoy  :func:`recemb.index.export.export_index`    :func:`recemb.index.export.load_index`
hnsw   :func:`recemb.index.hnsw_export.export_hnsw` :func:`recemb.index.hnsw_export.load_hnsw_index`
exact  :func:`recemb.index.exact_export.export_exact` :func:`recemb.index.exact_export.load_exact_index`
=====  ==========================================  ===================================
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from recemb.embeddings import EmbeddingSet
from recemb.index.base import Index, RecembIndexError

INDEX_KINDS = ("annoy", "hnsw", "exact")


def manifest_kind(path: str | os.PathLike) -> str:
    """The ``kind`` of the manifest in directory ``path`` (an index kind, or ``covisit``)."""
    f = Path(path) / "manifest.json"
    try:
        return str(json.loads(f.read_text()).get("kind"))
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise RecembIndexError(f"{f}: not a readable manifest ({e}); re-export with `recemb export CONFIG`") from None


def read_index_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The checked manifest of an index directory of any kind (its kind's own reader)."""
    from recemb.index.exact_export import read_exact_manifest
    from recemb.index.export import read_manifest
    from recemb.index.hnsw_export import read_hnsw_manifest

    kind = manifest_kind(index_dir)
    readers = {"annoy": read_manifest, "hnsw": read_hnsw_manifest, "exact": read_exact_manifest}
    if kind not in readers:
        raise RecembIndexError(
            f"{index_dir}: manifest kind {kind!r} is not an index ({', '.join(INDEX_KINDS)}); re-export with "
            "`recemb export CONFIG`"
        )
    return readers[kind](index_dir)


def open_index(
    index_dir: str | os.PathLike,
    verify: bool = True,
    embeddings: EmbeddingSet | None = None,
    search_k: int | None = None,
    threads: int = 1,
) -> tuple[Index, dict[str, Any]]:
    """``(index, manifest)`` of an exported index of any kind, checked before it is opened.

    Args:
        embeddings: the EmbeddingSet it was exported from (checked to match); None = the one
            its manifest names.
        search_k: Annoy only: override the manifest's search_k.
        threads: query threads of a batch search (Annoy, HNSW).
    """
    from recemb.index.exact_export import load_exact_index
    from recemb.index.export import load_index
    from recemb.index.hnsw_export import load_hnsw_index

    manifest = read_index_manifest(index_dir)
    index: Index
    if manifest["kind"] == "exact":
        index = load_exact_index(index_dir, verify=verify, embeddings=embeddings)
    elif manifest["kind"] == "hnsw":
        index = load_hnsw_index(index_dir, verify=verify, embeddings=embeddings, threads=threads)
    else:
        index = load_index(index_dir, verify=verify, search_k=search_k, threads=threads, embeddings=embeddings)
    return index, manifest


def describe(manifest: dict[str, Any]) -> str:
    """One line about an exported index for logs (its kind's own ``describe``)."""
    from recemb.index import exact_export, export, hnsw_export

    kind = manifest.get("kind")
    module = {"exact": exact_export, "hnsw": hnsw_export, "annoy": export}.get(str(kind))
    if module is None:
        raise RecembIndexError(f"manifest kind {kind!r} is not an index ({', '.join(INDEX_KINDS)})")
    return module.describe(manifest)
