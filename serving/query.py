"""One request's candidates with numpy and plain Python only (no polars per request).

:class:`recemb.retrieval.retriever.Retriever` answers batches through polars frames,
which costs ~16 ms per call however small the batch; the service answers one
user at a time within a few milliseconds. :class:`OnlineRetriever` wraps the
SAME Retriever object (its sources, indexes, popularity, query mode, quotas)
and computes exactly what ``Retriever.recommend`` / ``similar_items`` return
(tests/test_serving.py checks the two against each other), as lists:

1. query per source: the user's vector if the source has user vectors and
   knows the user, else an optional precomputed query (the user tower), else
   :func:`recemb.retrieval.query.history_query` over the known history items.
2. ``index.search(q, bucket)`` with ``bucket = 2**ceil(log2(k + margin))``
   capped at the catalogue (the batch path's bucketing, so Annoy sees the
   same k), margin = exclusions + blocked items.
3. drop seen / excluded / blocked; each source keeps its best k.
4. blend: quota picks in source order, then leftovers by (rank, source
   order), then popularity; final order by (phase, pick, source order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recemb.retrieval.query import history_query
from recemb.retrieval.retriever import POPULARITY, Retriever, Source, check_query

Hit = tuple[str, float, str]  # (item_id, score, source)


@dataclass(frozen=True)
class Answer:
    """Top-k ``hits`` and whether no source could form a query (all popularity: a fallback)."""

    hits: list[Hit]
    fallback: bool


class _Lookup:
    """One source's id -> row dicts (built once per loaded index, not per request)."""

    def __init__(self, src: Source):
        self.src = src
        self.ids = src.items.ids  # [N] object array of str
        self.item_row = {s: i for i, s in enumerate(self.ids.tolist())}
        self.user_row = {s: i for i, s in enumerate(src.users.ids.tolist())} if src.users is not None else None
        self.cosine = src.index.metric == "cosine"


class OnlineRetriever:
    """Single-request front of a :class:`Retriever` (same semantics, dict lookups, numpy search)."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever
        self.lookups = {name: _Lookup(src) for name, src in retriever.sources.items()}
        self.popularity: list[str] = retriever.popularity["item_id"].to_list()

    def known_item(self, item_id: str) -> bool:
        """True when any source holds ``item_id``."""
        return any(item_id in lk.item_row for lk in self.lookups.values())

    def similar(self, item_id: str, k: int, blocked: Sequence[str] = (), quotas: Mapping | None = None) -> Answer:
        """Same as ``Retriever.similar_items``: the item's own vector per source, never the item."""
        return self._answer([item_id], k, (), blocked, quotas, None, "last", True, None)

    def recommend(
        self,
        history: Sequence[str],
        k: int,
        exclude: Sequence[str] = (),
        blocked: Sequence[str] = (),
        quotas: Mapping | None = None,
        user_id: str | None = None,
        query: str | None = None,
        query_vectors: Mapping[str, np.ndarray] | None = None,
    ) -> Answer:
        """Same as ``Retriever.recommend``; ``query_vectors {source: [D]}`` overrides history queries."""
        r = self.retriever
        return self._answer(
            history,
            k,
            exclude,
            blocked,
            quotas,
            user_id,
            query or r.query,
            r.exclude_seen,
            query_vectors,
        )

    # --------------------------------------------------------------- internals
    def _answer(self, history, k, exclude, blocked, quotas, user_id, mode, exclude_seen, query_vectors) -> Answer:
        r = self.retriever
        check_query(mode, r.last_n)
        quota = r.quotas_for(k, quotas if quotas is not None else r.quotas)
        excl = set(history) if exclude_seen else set()
        excl.update(exclude)
        blocked = set(blocked)
        margin = len(excl) + len(blocked)

        per_source: list[tuple[int, str, list[tuple[str, float]]]] = []
        for order, (name, lk) in enumerate(self.lookups.items()):
            q = self._query(lk, history, user_id, mode, (query_vectors or {}).get(name))
            if q is None:
                continue
            index = lk.src.index
            want = k + margin
            bucket = min(1 << max(0, int(np.ceil(np.log2(max(want, 1))))), index.count)
            rows, scores = index.search(q[None, :], bucket)
            cands = []
            for row, score in zip(rows[0].tolist(), scores[0].tolist()):
                if row < 0:
                    continue
                item = lk.ids[row]
                if item in excl or item in blocked:
                    continue
                cands.append((item, score))
                if len(cands) == k:
                    break
            if cands:
                per_source.append((order, name, cands))

        # (phase, pick, order, item, score, source); phase 0 = quota, 1 = leftovers, 2 = popularity
        picked: list[tuple[int, int, int, str, float, str]] = []
        taken: set[str] = set()
        for order, name, cands in per_source:
            pick = 0
            for item, score in cands:
                if pick >= quota[name]:
                    break
                if item in taken:
                    continue
                picked.append((0, pick, order, item, score, name))
                taken.add(item)
                pick += 1
        free = k - len(picked)
        if per_source and free > 0:
            rest = sorted(
                (srank, order, item, score, name)
                for order, name, cands in per_source
                for srank, (item, score) in enumerate(cands)
                if item not in taken
            )
            pick = 0
            for _srank, order, item, score, name in rest:
                if pick >= free:
                    break
                if item in taken:
                    continue
                picked.append((1, pick, order, item, score, name))
                taken.add(item)
                pick += 1
        need = k - len(picked)
        if need > 0:
            pick = 0
            for pop_rank, item in enumerate(self.popularity[: k + margin]):
                if pick >= need:
                    break
                if item in excl or item in blocked or item in taken:
                    continue
                score = float(np.float32(1.0 / (1.0 + pop_rank)))
                picked.append((2, pick, len(self.lookups), item, score, POPULARITY))
                pick += 1
        picked.sort(key=lambda p: (p[0], p[1], p[2]))
        hits = [(item, score, src) for _, _, _, item, score, src in picked[:k]]
        return Answer(hits, fallback=not per_source)

    def _query(self, lk: _Lookup, history: Sequence[str], user_id: str | None, mode: str, given) -> np.ndarray | None:
        """The ``[D]`` query of one source, or None when it knows neither the user nor an item."""
        src = lk.src
        if lk.user_row is not None and src.users is not None and user_id is not None:
            urow = lk.user_row.get(user_id)
            if urow is not None:
                return np.asarray(src.users.vectors[urow], dtype=np.float32)
        if given is not None:
            return np.asarray(given, dtype=np.float32)
        rows = [row for row in map(lk.item_row.get, history) if row is not None]
        if not rows:
            return None
        return history_query(src.items.vectors[rows], mode, self.retriever.last_n, lk.cosine)
