"""Production's candidate lists as evaluation rows, with every source fitted on the train split.

The candidate job and the service blend several sources (embedding indexes,
co-visitation) with :func:`recemb.retrieval.blend.blend`. :class:`BlendScorer`
runs that same core inside a protocol runner, over sources fitted on the
protocol's train part like every model row, so its row reads as "what
production would ship, measured like the models":

* each source is a Scorer (a model row's own :class:`ModelScorer`, or
  :class:`CoVisitScorer`); its ``[B, N]`` scores give its ranked items;
* :func:`blend` filters (the seen items when ``exclude_seen`` resolves to true
  on the train part, as the candidate job does), applies the quotas, tops up
  with popularity;
* the list (length ``k + 1``: one spare for the P-ML validation item, which the
  runner masks, as the candidate job excludes it) becomes a score row: listed
  items score ``k + 1 - position``, the rest :data:`MISSING_SCORE`.

Sources are shared with their own rows through :class:`SharedFit`, so a
source is fitted once per split whatever number of rows read it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from recemb.data.repeats import ExcludeSeen, resolve_exclude_seen
from recemb.data.vocab import Vocab
from recemb.errors import NotFittedError
from recemb.eval.embedding_scorer import MISSING_SCORE
from recemb.eval.scorers import QueryBatch, Scorer
from recemb.retrieval.blend import Found, best_first, blend, fusion_weights, quotas_for
from recemb.retrieval.candidates import popularity
from recemb.retrieval.covisit import CoVisitTable


class SharedFit:
    """A scorer fitted once per split (the same ``train`` object), however many rows fit it."""

    def __init__(self, scorer: Scorer):
        self.scorer, self.name = scorer, scorer.name
        self._train: pl.DataFrame | None = None  # held, so that its id is never reused
        self._catalogue: Vocab | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> SharedFit:
        if train is not self._train or catalogue is not self._catalogue:
            self.scorer.fit(train, catalogue)
            self._train, self._catalogue = train, catalogue
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        return self.scorer.score_queries(queries)


class CoVisitScorer:
    """The co-visitation source (:class:`~recemb.retrieval.covisit.CoVisitTable`) as a Scorer.

    Items that are no stored neighbour of any history item score :data:`MISSING_SCORE`.
    """

    def __init__(self, unit: str = "auto", top_m: int = 100, query: str = "recency", name: str = "covisit"):
        self.unit, self.top_m, self.query, self.name = unit, top_m, query, name
        self.table: CoVisitTable | None = None
        self._cols: np.ndarray | None = None  # [table N] catalogue row of each table item

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> CoVisitScorer:
        self.table = CoVisitTable.build(train, unit=self.unit, top=self.top_m, query=self.query)
        self._cols = catalogue.lookup(pl.Series("id", self.table.ids.tolist(), dtype=pl.String))
        self.n_items = len(catalogue)
        self._ids = catalogue.ids
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        if self.table is None or self._cols is None:
            raise NotFittedError(f"{self.name}: call fit() before score_queries()")
        histories = [self._ids[queries.query(b)].tolist() for b in range(len(queries))]
        sparse = self.table.score(histories).tocoo()
        out = np.full((len(queries), self.n_items), MISSING_SCORE, dtype=np.float32)
        cols = self._cols[sparse.col]
        keep = cols >= 0
        out[sparse.row[keep], cols[keep]] = sparse.data[keep]
        return out


class BlendScorer:
    """The blended candidate list of ``sources`` as a Scorer (module docstring).

    Args:
        sources: ``{name: Scorer}`` in blending priority order (wrap shared ones in SharedFit).
        k: the list length the protocol scores (its largest cut-off).
        quotas: ``{source: count or fraction of k}``; None: fusion (as the Retriever).
        weights: ``{source: weight}`` of the fusion; None: 1 for every source.
        exclude_seen: drop the query's items (``"auto"``: by the train part's repeat share).
        name: the row label.
    """

    def __init__(
        self,
        sources: Mapping[str, Scorer],
        k: int,
        quotas: Mapping[str, int | float] | None = None,
        exclude_seen: ExcludeSeen = "auto",
        name: str | None = None,
        weights: Mapping[str, float] | None = None,
    ):
        self.sources = dict(sources)
        self.k, self.quotas, self.exclude_seen, self.weights = k, quotas, exclude_seen, weights
        self.name = name or f"candidates[{'+'.join(self.sources)}]"
        self._ids: np.ndarray | None = None
        # cache: keep each batch's ranked source lists, so that scoring the same queries again
        # with other weights or quotas costs only the blending (recemb.tune.blend)
        self.cache = False
        self._found: dict[bytes, dict[str, list[Found | None]]] = {}

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> BlendScorer:
        for src in self.sources.values():
            src.fit(train, catalogue)
        self.popularity = popularity(train)  # the candidate job's fallback
        self.exclude = resolve_exclude_seen(self.exclude_seen, train)
        self._ids = catalogue.ids
        self._found = {}
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]``: ``k + 1 - position`` on each query's blended list, :data:`MISSING_SCORE` elsewhere."""
        if self._ids is None:
            raise NotFittedError(f"{self.name}: call fit() before score_queries()")
        ids, b = self._ids, len(queries)
        length = self.k + 1
        quota = quotas_for(list(self.sources), length, self.quotas)
        weights = fusion_weights(list(self.sources), self.quotas, self.weights)  # the Retriever's rule
        histories = [ids[queries.query(i)].tolist() for i in range(b)]
        excluded = [frozenset(h) if self.exclude else frozenset() for h in histories]
        want = length + (queries.lengths() if self.exclude else np.zeros(b, dtype=np.int64))
        key = queries.offsets.tobytes() + b"|" + queries.items.tobytes()
        found = self._found.get(key) if self.cache else None
        if found is None:
            found = {name: _ranked(src.score_queries(queries), want, ids) for name, src in self.sources.items()}
            if self.cache:
                self._found[key] = found
        out = np.full((b, len(ids)), MISSING_SCORE, dtype=np.float32)
        row_of = {s: i for i, s in enumerate(ids.tolist())}
        for i in range(b):
            answer = blend(
                [(n, f[i]) for n, f in found.items()],
                length,
                quota,
                excluded[i],
                frozenset(),
                self.popularity,
                weights,
            )
            cols = [row_of[item] for item, _, _ in answer.hits]
            out[i, cols] = np.arange(length, length - len(cols), -1, dtype=np.float32)
        return out


def _ranked(scores: np.ndarray, want: np.ndarray, ids: np.ndarray) -> list[Found | None]:
    """Per row, the ``want[b]`` best scored items ``(ids, scores)``, best first; None when it scores none."""
    out: list[Found | None] = []
    valid = scores > MISSING_SCORE / 2
    for b in range(scores.shape[0]):
        cols = np.flatnonzero(valid[b])
        if cols.size == 0:
            out.append(None)
            continue
        cols, s = best_first(cols, scores[b, cols], int(want[b]))
        out.append((ids[cols], s))
    return out
