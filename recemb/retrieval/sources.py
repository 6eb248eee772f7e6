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

import os
from collections.abc import Sequence
from typing import Any, Protocol, cast

import numpy as np

from recemb.embeddings import EmbeddingSet
from recemb.errors import RecembError
from recemb.index.base import Index
from recemb.index.loading import manifest_kind, open_index, read_index_manifest
from recemb.pooling import QUERY_MODES, csr_weights, weighted_mean
from recemb.retrieval.blend import Found
from recemb.retrieval.covisit import KIND as COVISIT_KIND
from recemb.retrieval.covisit import CoVisitTable
from recemb.retrieval.covisit import read_manifest as read_covisit_manifest

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
        exclude: Sequence[frozenset[str]] | None = None,
    ) -> list[Found | None]:
        """Per user ``b``: up to ``want[b]`` best items, or None (no query for this user); items in
        ``exclude[b]`` may be left out (the caller filters them anyway)."""
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

    Over an index that can change while it serves (HNSW), :meth:`add_items` appends
    items (rows ``N, N+1, ...``; their vectors live beside the EmbeddingSet, in memory)
    and :meth:`remove_items` removes them; both last until the source is reloaded.
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
        self._ids = items.ids  # [R] ids of every row; R = N + rows added live
        self._added = np.zeros((0, items.dim), dtype=np.float32)  # [R - N, D]
        # Cosine: each item counts equally in a pooled query, so its weight is divided by its norm
        # (the query's own length does not matter to a cosine index). [R] floats, not a normalised
        # copy of a possibly memory-mapped [N, D] set.
        self._scale = np.ones(len(items), dtype=np.float32)
        for lo in range(0, len(items), 65536):
            self._scale[lo : lo + 65536] = self._inverse_norms(np.asarray(items.vectors[lo : lo + 65536]))
        self._known = np.r_[np.ones(len(items), dtype=bool), False]  # row R: unknown (or removed) ids

    @property
    def rows(self) -> int:
        """Rows of the index R (the EmbeddingSet's N plus rows added live, removed ones included)."""
        return len(self._ids)

    def knows(self, item_id: str) -> bool:
        return item_id in self.item_row

    def _inverse_norms(self, x: np.ndarray) -> np.ndarray:
        if self.index.metric != "cosine":
            return np.ones(len(x), dtype=np.float32)
        norms = np.linalg.norm(np.asarray(x, dtype=np.float32), axis=1)
        return np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)

    def _vectors(self) -> np.ndarray | _StackedRows:
        """Every row's vector, ``[R, D]``: the EmbeddingSet's, then those added live."""
        return self.items.vectors if not len(self._added) else _StackedRows(self.items.vectors, self._added)

    def queries(
        self,
        histories: Sequence[Sequence[str]],
        user_ids: Sequence[str] | None,
        mode: str,
        last_n: int,
        query_vectors: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(have [B] bool, queries [B, D] float32)``: user vector, else given vector, else pooled history."""
        b, n = len(histories), self.rows
        get = self.item_row.get
        items = np.fromiter((get(x, n) for h in histories for x in h), dtype=np.int64)
        offsets = np.zeros(b + 1, dtype=np.int64)
        np.cumsum([len(h) for h in histories], out=offsets[1:])
        w = csr_weights(items, offsets, self._known, mode, last_n)
        rows = np.where(items < n, items, 0)  # unknown ids weigh 0: any row will do
        # weighted_mean only gathers rows of its matrix, which _StackedRows does as an array would.
        q = weighted_mean(cast(np.ndarray, self._vectors()), rows, offsets, w * self._scale[rows])
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
        exclude: Sequence[frozenset[str]] | None = None,
    ) -> list[Found | None]:
        """Index search per user, in power-of-two buckets of ``want``.

        One long history must not make every user's search as wide as its own
        (Annoy's cost grows with k), so queries are grouped by
        ``2**ceil(log2(want))``, capped at the catalogue; a user searched
        alone gets the same k, so batch and online answers agree.

        ``exclude``: per user, ids the caller will drop. An index that skips rows inside
        its search (HNSW) is given them and asked for that many fewer; any other is
        searched for ``want`` and leaves the filtering to the caller.
        """
        have, q = self.queries(histories, user_ids, mode, last_n, query_vectors)
        out: list[Found | None] = [None] * len(histories)
        users = np.flatnonzero(have)
        if users.size == 0:
            return out
        want = np.asarray(want, dtype=np.int64)[users]
        skip: list[np.ndarray] | None = None
        if exclude is not None and self.index.filters_inside:
            get = self.item_row.get
            skip = [
                np.fromiter((r for x in exclude[u] if (r := get(x)) is not None), dtype=np.int64)
                for u in users.tolist()
            ]
            want = np.maximum(want - np.fromiter((len(r) for r in skip), dtype=np.int64, count=len(skip)), 1)
        bucket = np.minimum(2 ** np.ceil(np.log2(np.maximum(want, 1))).astype(np.int64), self.index.count)
        for kk in np.unique(bucket):
            sel = np.flatnonzero(bucket == kk)
            if skip is None:
                found, scores = self.index.search(q[users[sel]], int(kk))
            else:
                found, scores = self.index.search(q[users[sel]], int(kk), exclude=[skip[i] for i in sel])
            for r, f, s in zip(users[sel].tolist(), found, scores):
                ok = f >= 0
                out[r] = (self._ids[f[ok]], s[ok])
        return out

    # ------------------------------------------------------------ live changes
    def add_items(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Make ``ids`` (new, or replacing a known item's vector) searchable now, without a rebuild.

        Args:
            ids: ``[M]`` item ids, distinct.
            vectors: ``[M, D]`` their vectors (e.g. a cold item's content vector).
        """
        add = getattr(self.index, "add", None)
        if add is None:
            raise RecembError(
                f"a {type(self.index).__name__} cannot take items while it serves; export this model with "
                "`export.backend: hnsw` to add items live, or re-export with them"
            )
        ids = [str(x) for x in ids]
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape != (len(ids), self.items.dim):
            raise RecembError(f"{len(ids)} ids need vectors of shape ({len(ids)}, {self.items.dim}), got {x.shape}")
        if len(set(ids)) != len(ids):
            raise RecembError("ids to add must be distinct")
        if not np.isfinite(x).all():
            raise RecembError("vectors to add hold NaN or inf; fix the items' features first")
        self.remove_items([i for i in ids if i in self.item_row])  # a replaced item keeps no stale row
        rows = add(x)
        self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=object)])
        self._added = np.concatenate([self._added, x])
        self._scale = np.concatenate([self._scale, self._inverse_norms(x)])
        self._known = np.r_[np.ones(len(self._ids), dtype=bool), False]
        self.item_row.update(zip(ids, rows.tolist()))

    def remove_items(self, ids: Sequence[str]) -> list[str]:
        """Stop returning ``ids`` and forget them; returns the ids that were unknown (nothing to do)."""
        known = [i for i in ids if i in self.item_row]
        if known:
            if not hasattr(self.index, "remove"):
                raise RecembError(
                    f"a {type(self.index).__name__} cannot drop items while it serves; export this model with "
                    "`export.backend: hnsw`, or block the items per request"
                )
            self.index.remove([self.item_row[i] for i in known])
        for i in known:
            del self.item_row[i]
        return [i for i in ids if i not in set(known)]


class _StackedRows:
    """``[N + M, D]`` rows of a base array and an added one, gathered by row (what pooling reads)."""

    def __init__(self, base: np.ndarray, added: np.ndarray):
        self.base, self.added = base, added
        self.shape = (len(base) + len(added), base.shape[1])

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        n = len(self.base)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        old = rows < n
        out[old] = self.base[rows[old]]
        out[~old] = self.added[rows[~old] - n]
        return out


class CoVisitSource:
    """A co-visitation table as a source (it ignores user ids, query modes and query vectors)."""

    def __init__(self, table: CoVisitTable):
        self.table = table

    def knows(self, item_id: str) -> bool:
        return item_id in self.table.item_row

    def search(self, histories: Sequence[Sequence[str]], want: np.ndarray, **_: object) -> list[Found | None]:
        return self.table.search([list(h) for h in histories], want)


def load_source(
    index_dir: str | os.PathLike,
    verify: bool = True,
    *,
    users: str | os.PathLike | None | bool = True,
    search_k: int | None = None,
) -> tuple[CandidateSource, dict[str, Any]]:
    """Open ``<run>/index/<name>/`` as a source, checked; returns ``(source, manifest)``.

    Args:
        index_dir: an index of any kind (:mod:`recemb.index.loading`) or a co-visitation directory.
        verify: check sha256 checksums (and a co-visitation table's rows).
        users: for an embedding index, the user EmbeddingSet directory; True = the
            model's ``<run>/<model>/user_embeddings`` when it exists, None/False = none.
        search_k: Annoy search_k; None = the manifest's.
    """
    from recemb.index.export import embeddings_dir

    if manifest_kind(index_dir) == COVISIT_KIND:
        return CoVisitSource(CoVisitTable.load(index_dir, verify=verify)), read_covisit_manifest(index_dir)
    read_index_manifest(index_dir)  # a foreign or damaged manifest is refused before anything is read
    emb_dir = embeddings_dir(index_dir)
    items = EmbeddingSet.load(emb_dir, verify=verify)
    index, manifest = open_index(index_dir, verify=verify, embeddings=items, search_k=search_k)
    if users is True:
        guess = emb_dir.parent / USER_EMBEDDINGS
        users = guess if (guess / "manifest.json").is_file() else None
    user_set = EmbeddingSet.load(users, verify=verify) if users else None
    return EmbeddingSource(items, index, user_set), manifest
