"""The Retriever: user histories -> each source's finds -> filter -> blend -> top up.

One Retriever answers both paths with the same code: batch candidate
generation calls :meth:`Retriever.recommend_batch` (a polars frame for B
users), the online service :meth:`Retriever.answer` (one user, plain lists).
Both ask every source (:mod:`recemb.retrieval.sources`: embedding indexes,
co-visitation) for all users at once, then blend each user's finds with the
one core, :func:`recemb.retrieval.blend.blend` (filtering, quotas,
leftovers, popularity top-up; its docstring has the rules).

Each source is asked for ``k + margin`` items per user, margin = the user's
exclusions (seen items when ``exclude_seen``, plus ``exclude``) + the blocked
items, so that filtering still leaves k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from recemb.embeddings import EmbeddingSet
from recemb.errors import RecembError
from recemb.index.base import Index
from recemb.retrieval.blend import POPULARITY, Answer, Hit, blend, fusion_weights, quotas_for
from recemb.retrieval.sources import CandidateSource, EmbeddingSource, check_query

__all__ = ["POPULARITY", "Answer", "Retriever", "check_query"]

_OUT_SCHEMA = {
    "row": pl.Int64,
    "rank": pl.Int32,
    "item_id": pl.String,
    "score": pl.Float32,
    "source": pl.String,
}


class Retriever:
    """Candidates for users and similar items, from one or more sources.

    Args:
        sources: ``{name: CandidateSource}`` (an ``(EmbeddingSet, Index)`` pair
            becomes an EmbeddingSource); the order is the blending priority.
        popularity: item ids, most popular first (the fallback).
        query: how a history becomes a query vector: one of ``QUERY_MODES``.
        last_n: window of ``mean_last_n``.
        quotas: per-source quotas (see :meth:`recommend_batch`); without quotas (here or
            per call) the sources are fused by weighted reciprocal rank.
        exclude_seen: drop the history's items from the results.
        weights: ``{source: weight}`` of the fusion (:func:`recemb.retrieval.blend.blend`);
            default: 1 for every source. Not with ``quotas``.
    """

    def __init__(
        self,
        sources: Mapping[str, CandidateSource | tuple[EmbeddingSet, Index]],
        popularity: Sequence[str] | pl.Series | np.ndarray = (),
        query: str = "mean_last_n",
        last_n: int = 5,
        quotas: Mapping[str, int | float] | None = None,
        exclude_seen: bool = True,
        weights: Mapping[str, float] | None = None,
    ):
        if not sources:
            raise RecembError("Retriever needs at least one source, e.g. {'item2vec': (EmbeddingSet, Index)}")
        self.sources: dict[str, CandidateSource] = {}
        for name, src in sources.items():
            if name == POPULARITY:
                raise RecembError(f"source name {POPULARITY!r} is reserved for the fallback; rename the source")
            self.sources[name] = EmbeddingSource(*src) if isinstance(src, tuple) else src
        check_query(query, last_n)
        self.query, self.last_n = query, int(last_n)
        self.quotas = quotas
        self.exclude_seen = exclude_seen
        unknown = sorted(set(weights or {}) - set(self.sources))
        if unknown:
            raise RecembError(f"weights name unknown sources {unknown}; sources are {list(self.sources)}")
        if weights is not None and (
            any(not np.isfinite(w) or w < 0 for w in weights.values()) or not any(weights.values())
        ):
            raise RecembError(f"weights must be finite, >= 0 and not all 0, got {dict(weights)}")
        if quotas is not None and weights is not None:
            raise RecembError("set quotas or weights, not both: quotas pick places per source, weights fuse ranks")
        self.weights = None if weights is None else dict(weights)
        self.popularity: list[str] = list(dict.fromkeys(str(x) for x in list(popularity)))
        self.removed: set[str] = set()  # items withdrawn live (remove_items): blocked for every source

    # ----------------------------------------------------------- live changes
    def add_items(self, source: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Make ``ids`` searchable in ``source`` now (an HNSW-backed embedding source): new items
        or new vectors for known ones, e.g. a cold item's content vector ``[M, D]``."""
        src = self.sources.get(source)
        if not isinstance(src, EmbeddingSource):
            raise RecembError(f"{source!r} is not an embedding source here; sources are {list(self.sources)}")
        src.add_items(_checked_lists([ids], "ids")[0], vectors)
        self.removed.difference_update(ids)

    def _filters_inside(self) -> bool:
        return any(isinstance(s, EmbeddingSource) and s.index.filters_inside for s in self.sources.values())

    def remove_items(self, ids: Sequence[str]) -> None:
        """Never return ``ids`` again from any source or the popularity fallback; an HNSW source
        also drops them from its graph's results, so they cost no search slots."""
        ids = _checked_lists([ids], "ids")[0]
        for src in self.sources.values():
            if isinstance(src, EmbeddingSource) and src.index.filters_inside:
                src.remove_items(ids)
        self.removed.update(ids)

    # ----------------------------------------------------------------- public
    def known_item(self, item_id: str) -> bool:
        """True when any source can place ``item_id``."""
        return any(src.knows(item_id) for src in self.sources.values())

    def answer(
        self,
        history: Sequence[str],
        k: int,
        exclude: Sequence[str] = (),
        blocked: Sequence[str] = (),
        quotas: Mapping[str, int | float] | None = None,
        user_id: str | None = None,
        query: str | None = None,
        query_vectors: Mapping[str, np.ndarray] | None = None,
    ) -> Answer:
        """One user's top-k from their recent items (oldest first); ``query_vectors {source: [D]}``
        replaces that source's history query (the online user tower)."""
        given = None if query_vectors is None else {n: np.asarray(v)[None, :] for n, v in query_vectors.items()}
        return self.answers(
            [list(history)],
            k,
            [list(exclude)],
            blocked,
            quotas,
            None if user_id is None else [user_id],
            query,
            self.exclude_seen,
            given,
        )[0]

    def recommend(self, history: Sequence[str], k: int, **kwargs) -> list[Hit]:
        """Top-k ``(item_id, score, source)`` for one user (arguments as :meth:`answer`)."""
        return self.answer(history, k, **kwargs).hits

    def similar(
        self,
        item_id: str,
        k: int,
        blocked: Sequence[str] = (),
        quotas: Mapping[str, int | float] | None = None,
    ) -> Answer:
        """Top-k items most similar to ``item_id`` (never the item itself); popularity if unknown."""
        return self.answers([[item_id]], k, None, blocked, quotas, None, "last", True)[0]

    def similar_items(self, item_id: str, k: int, **kwargs) -> list[Hit]:
        """:meth:`similar` as a list of ``(item_id, score, source)``."""
        return self.similar(item_id, k, **kwargs).hits

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Sequence[str]] | None = None,
        blocked: Sequence[str] = (),
        quotas: Mapping[str, int | float] | None = None,
        user_ids: Sequence[str] | None = None,
        query: str | None = None,
        query_vectors: Mapping[str, np.ndarray] | None = None,
    ) -> pl.DataFrame:
        """Candidates for ``B`` users at once.

        Args:
            histories: ``B`` lists of item ids, oldest first (may be empty).
            k: candidates per user.
            exclude: ``B`` lists of extra item ids to drop per user.
            blocked: item ids dropped for everyone.
            quotas: ``{source: count}`` (ints) or ``{source: fraction of k}``
                (floats) for this call; default: the Retriever's, else fusion.
            user_ids: ``B`` user ids; used as the query for sources with
                user vectors, and as the output's ``user_id`` column.
            query: override the Retriever's query mode for this call.
            query_vectors: ``{source: [B, D]}`` replacing those sources' history
                queries (a user tower's, recemb.retrieval.towers).

        Returns:
            DataFrame ``[user_id | row, rank (i32, 1-based), item_id, score (f32), source]``,
            ``k`` rows per user unless the catalogue and popularity run out,
            sorted by user then rank.
        """
        if user_ids is not None and len(user_ids) != len(histories):
            raise RecembError(f"user_ids has {len(user_ids)} entries but histories has {len(histories)}; one per user")
        answers = self.answers(
            histories, k, exclude, blocked, quotas, user_ids, query, self.exclude_seen, query_vectors
        )
        lengths = [len(a.hits) for a in answers]
        hits = [h for a in answers for h in a.hits]
        df = pl.DataFrame(
            {
                "row": np.repeat(np.arange(len(answers), dtype=np.int64), lengths),
                "rank": np.concatenate(
                    [np.arange(1, n + 1, dtype=np.int32) for n in lengths] or [np.zeros(0, np.int32)]
                ),
                "item_id": [h[0] for h in hits],
                "score": np.asarray([h[1] for h in hits], dtype=np.float32),
                "source": [h[2] for h in hits],
            },
            schema=_OUT_SCHEMA,
        )
        if user_ids is None:
            return df
        users = pl.Series("user_id", list(user_ids), dtype=pl.String)
        return df.with_columns(users.gather(df["row"]).alias("user_id")).select(
            "user_id", "rank", "item_id", "score", "source"
        )

    def quotas_for(self, k: int, quotas: Mapping[str, int | float] | None) -> dict[str, int]:
        """``{source: places}`` of a k-long list (:func:`recemb.retrieval.blend.quotas_for`)."""
        return quotas_for(list(self.sources), k, quotas)

    def answers(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Sequence[str]] | None,
        blocked: Sequence[str],
        quotas: Mapping[str, int | float] | None,
        user_ids: Sequence[str] | None,
        query: str | None,
        exclude_seen: bool,
        query_vectors: Mapping[str, np.ndarray] | None = None,
    ) -> list[Answer]:
        """Every source searched once for all ``B`` users, then :func:`blend` per user.

        ``query_vectors``: ``{source: [B, D]}`` replacing those sources' history queries.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise RecembError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        mode = query or self.query
        check_query(mode, self.last_n)
        b = len(histories)
        if exclude is not None and len(exclude) != b:
            raise RecembError(f"exclude has {len(exclude)} lists but histories has {b}; one list per user")
        hist = _checked_lists(histories, "history")
        excl = _checked_lists(exclude, "exclude") if exclude is not None else [[] for _ in range(b)]
        asked_blocked = frozenset(_checked_lists([blocked], "blocked")[0])
        excluded = [frozenset(h).union(x) if exclude_seen else frozenset(x) for h, x in zip(hist, excl)]
        want = k + np.fromiter((len(e) for e in excluded), dtype=np.int64, count=b) + len(asked_blocked)
        # Items removed live are filtered too, but not searched past: an HNSW source never returns
        # them, and a long removal list must not widen every search (popularity tops up).
        blocked_set = asked_blocked | self.removed
        asked = quotas if quotas is not None else self.quotas
        quota = self.quotas_for(k, asked)
        # No quotas asked for: fuse ranks (equal weights unless configured), the better default
        # (quickstart P-SESS Recall@20 0.674 fused vs 0.623 by even quotas, docs/candidates.md).
        weights = fusion_weights(list(self.sources), asked, self.weights)
        # A source that filters inside its search (HNSW) skips these; built only when one does.
        dropped = [e | blocked_set for e in excluded] if self._filters_inside() else None
        found = {
            name: src.search(
                hist,
                want,
                user_ids=user_ids,
                mode=mode,
                last_n=self.last_n,
                query_vectors=(query_vectors or {}).get(name),
                exclude=dropped,
            )
            for name, src in self.sources.items()
        }
        return [
            blend(
                [(n, f[i]) for n, f in found.items()],
                k,
                quota,
                excluded[i],
                blocked_set,
                self.popularity,
                weights,
            )
            for i in range(b)
        ]


def _checked_lists(lists: Sequence[Sequence[str]], what: str) -> list[list[str]]:
    """``lists`` as lists of str ids, or a RecembError naming ``what``."""
    out = []
    for x in lists:
        if isinstance(x, str) or not isinstance(x, Sequence | np.ndarray | pl.Series):
            raise RecembError(f"{what} must be a list of lists of string item ids, got an element {x!r}")
        row = list(x)
        if not all(isinstance(i, str) for i in row):
            bad = next(i for i in row if not isinstance(i, str))
            raise RecembError(f"{what} must be a list of lists of string item ids, got {bad!r} in {row[:5]}")
        out.append(row)
    return out
