"""Candidate sources: what turns a batch of users into ranked items, one kind per artifact.

A source answers :meth:`CandidateSource.search` for B users at once: per user
its best ``want[b]`` items ``(ids, scores)``, best first and unfiltered, or
None when it cannot form a query for that user. The Retriever asks for ``k``
plus the user's exclusions and blocked items, so filtering still leaves k;
:mod:`recemb.retrieval.blend` filters and blends.

==============  ============================================================
EmbeddingSource item vectors + an :class:`~recemb.index.base.Index` (Annoy or
                exact) over the same rows, optional user vectors. Query: the
                user's own vector when the source has user vectors and knows
                the user, else a caller's query vector (the online user
                tower), else a pooled query over the known history items
                (:mod:`recemb.pooling` modes, unit vectors for cosine).
CoVisitSource   a :class:`~recemb.retrieval.covisit.CoVisitTable`: the
                history's items' stored neighbours, summed with the table's
                query weights (the knn-recency baseline's ranking).
==============  ============================================================

:func:`load_source` opens either from a directory ``<run>/index/<name>/`` by
the ``kind`` of its manifest (``annoy``, ``exact`` or ``covisit``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recemb.embeddings import EmbeddingSet
from recemb.errors import RecembError
from recemb.index.base import Index
from recemb.pooling import QUERY_MODES, csr_weights, weighted_mean
from recemb.retrieval.blend import Found
from recemb.retrieval.covisit import KIND as COVISIT_KIND
from recemb.retrieval.covisit import CoVisitTable
from recemb.retrieval.covisit import read_manifest as read_covisit_manifest

EXACT_KIND = "exact"  # recemb.index.exact_export.KIND
USER_EMBEDDINGS = "user_embeddings"  # <run>/<model>/user_embeddings beside <model>/embeddings


class CandidateSource(Protocol):
    """What the Retriever needs of a source (module docstring)."""

    def knows(self, item_id: str) -> bool:
        """True when the source can place ``item_id`` (it has a vector or a row for it)."""
        ...

    def search(
        self,
        histories: Sequence[Sequence[str]],
        want: np.ndarray,
        *,
        user_ids: Sequence[str] | None = None,
        mode: str = "mean_last_n",
        last_n: int = 5,
        query_vectors: np.ndarray | None = None,
    ) -> list[Found | None]:
        """Per user ``b``: up to ``want[b]`` best items, or None (no query for this user)."""
        ...


def check_query(query: str, last_n: int) -> None:
    """Raise a RecembError naming the argument unless ``query`` is a query mode and ``last_n >= 1``."""
    if query not in QUERY_MODES:
        raise RecembError(f"query must be one of {QUERY_MODES}, got {query!r}")
    if last_n < 1:
        raise RecembError(f"last_n must be >= 1, got {last_n}")


class EmbeddingSource:
    """Item vectors, an index over the same rows, optional user vectors.

    Attributes:
        items: item EmbeddingSet; ``items.vectors [N, D]``, row i = index row i.
        index: any :class:`~recemb.index.base.Index` built on those rows.
        users: optional user EmbeddingSet ``[U, D]`` (two-tower) used as the
            query for known user ids.
    """

    def __init__(self, items: EmbeddingSet, index: Index, users: EmbeddingSet | None = None):
        if index.count != len(items) or index.dim != items.dim:
            raise RecembError(
                f"index holds {index.count} x {index.dim} but the item EmbeddingSet has "
                f"{len(items)} x {items.dim}; export the index from this EmbeddingSet "
                "(`recemb export CONFIG`)"
            )
        if users is not None and users.dim != items.dim:
            raise RecembError(f"user vectors have dim {users.dim}, item vectors {items.dim}; use one model's pair")
        self.items, self.index, self.users = items, index, users
        self.item_row = {s: i for i, s in enumerate(items.ids.tolist())}
        self.user_row = {s: i for i, s in enumerate(users.ids.tolist())} if users is not None else {}
        # Cosine: each item counts equally in a pooled query, so its weight is divided by its norm
        # (the query's own length does not matter to a cosine index). [N] floats, not a normalised
        # copy of a possibly memory-mapped [N, D] set.
        self._scale = np.ones(len(items), dtype=np.float32)
        if index.metric == "cosine":
            for lo in range(0, len(items), 65536):
                norms = np.linalg.norm(np.asarray(items.vectors[lo : lo + 65536], dtype=np.float32), axis=1)
                self._scale[lo : lo + 65536] = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
        self._known = np.r_[np.ones(len(items), dtype=bool), False]  # row N: unknown ids

    def knows(self, item_id: str) -> bool:
        return item_id in self.item_row

    def queries(
        self,
        histories: Sequence[Sequence[str]],
        user_ids: Sequence[str] | None,
        mode: str,
        last_n: int,
        query_vectors: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(have [B] bool, queries [B, D] float32)``: user vector, else given vector, else pooled history."""
        b, n = len(histories), len(self.items)
        get = self.item_row.get
        items = np.fromiter((get(x, n) for h in histories for x in h), dtype=np.int64)
        offsets = np.zeros(b + 1, dtype=np.int64)
        np.cumsum([len(h) for h in histories], out=offsets[1:])
        w = csr_weights(items, offsets, self._known, mode, last_n)
        rows = np.where(items < n, items, 0)  # unknown ids weigh 0: any row will do
        q = weighted_mean(self.items.vectors, rows, offsets, w * self._scale[rows])
        have = np.bincount(np.repeat(np.arange(b), np.diff(offsets)), weights=w, minlength=b) > 0
        if query_vectors is not None:
            given = np.asarray(query_vectors, dtype=np.float32).reshape(b, -1)
            q[:], have[:] = given, True
        if self.users is not None and user_ids is not None:
            urow = np.fromiter((self.user_row.get(u, -1) for u in user_ids), dtype=np.int64, count=b)
            mine = urow >= 0
            q[mine] = np.asarray(self.users.vectors[urow[mine]], dtype=np.float32)
            have |= mine
        return have, q

    def search(
        self,
        histories: Sequence[Sequence[str]],
        want: np.ndarray,
        *,
        user_ids: Sequence[str] | None = None,
        mode: str = "mean_last_n",
        last_n: int = 5,
        query_vectors: np.ndarray | None = None,
    ) -> list[Found | None]:
        """Index search per user, in power-of-two buckets of ``want``.

        One long history must not make every user's search as wide as its own
        (Annoy's cost grows with k), so queries are grouped by
        ``2**ceil(log2(want))``, capped at the catalogue; a user searched
        alone gets the same k, so batch and online answers agree.
        """
        have, q = self.queries(histories, user_ids, mode, last_n, query_vectors)
        out: list[Found | None] = [None] * len(histories)
        rows = np.flatnonzero(have)
        if rows.size == 0:
            return out
        want = np.asarray(want, dtype=np.int64)[rows]
        bucket = np.minimum(2 ** np.ceil(np.log2(np.maximum(want, 1))).astype(np.int64), self.index.count)
        ids = self.items.ids
        for kk in np.unique(bucket):
            sel = np.flatnonzero(bucket == kk)
            found, scores = self.index.search(q[rows[sel]], int(kk))
            for r, f, s in zip(rows[sel].tolist(), found, scores):
                ok = f >= 0
                out[r] = (ids[f[ok]], s[ok])
        return out


class CoVisitSource:
    """A co-visitation table as a source (it ignores user ids, query modes and query vectors)."""

    def __init__(self, table: CoVisitTable):
        self.table = table

    def knows(self, item_id: str) -> bool:
        return item_id in self.table.item_row

    def search(self, histories: Sequence[Sequence[str]], want: np.ndarray, **_: object) -> list[Found | None]:
        return self.table.search([list(h) for h in histories], want)


def source_kind(path: str | os.PathLike) -> str:
    """The ``kind`` of the manifest in ``path`` (``annoy``, ``exact`` or ``covisit``)."""
    f = Path(path) / "manifest.json"
    try:
        return str(json.loads(f.read_text()).get("kind"))
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise RecembError(f"{f}: not a readable manifest ({e}); re-export with `recemb export CONFIG`") from None


def load_source(
    index_dir: str | os.PathLike,
    verify: bool = True,
    *,
    users: str | os.PathLike | None | bool = True,
    search_k: int | None = None,
) -> tuple[CandidateSource, dict[str, Any]]:
    """Open ``<run>/index/<name>/`` as a source, checked; returns ``(source, manifest)``.

    Args:
        index_dir: an Annoy index, an exact (maybe compressed) index or a co-visitation directory.
        verify: check sha256 checksums (and a co-visitation table's rows).
        users: for an Annoy index, the user EmbeddingSet directory; True = the
            model's ``<run>/<model>/user_embeddings`` when it exists, None/False = none.
        search_k: Annoy search_k; None = the manifest's.
    """
    from recemb.index.exact_export import load_exact_index, read_exact_manifest
    from recemb.index.export import embeddings_dir, load_index, read_manifest

    kind = source_kind(index_dir)
    if kind == COVISIT_KIND:
        return CoVisitSource(CoVisitTable.load(index_dir, verify=verify)), read_covisit_manifest(index_dir)
    exact = kind == EXACT_KIND
    manifest = read_exact_manifest(index_dir) if exact else read_manifest(index_dir)  # checked before opening
    emb_dir = embeddings_dir(index_dir)
    items = EmbeddingSet.load(emb_dir, verify=verify)
    index: Index = (
        load_exact_index(index_dir, verify=verify, embeddings=items)
        if exact
        else load_index(index_dir, verify=verify, search_k=search_k, embeddings=items)
    )
    if users is True:
        guess = emb_dir.parent / USER_EMBEDDINGS
        users = guess if (guess / "manifest.json").is_file() else None
    user_set = EmbeddingSet.load(users, verify=verify) if users else None
    return EmbeddingSource(items, index, user_set), manifest
