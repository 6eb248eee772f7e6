"""Scorers over EmbeddingSets, for the protocol runners (recemb.eval.protocols).

:class:`EmbeddingScorer` turns each query (a user's train history or a
session prefix, as catalogue indices, oldest first) into one query vector
and scores the catalogue by cosine or dot product. :class:`UserEmbeddingScorer`
looks up each query's user vector instead (a two-tower user EmbeddingSet).

Catalogue items that the item set has no vector for score ``MISSING_SCORE``
(-1e30): finite, so metric code that subtracts or compares scores stays
well defined, yet below any real cosine or dot score, so such items always
rank last (and tie among themselves). Query items without a vector are
ignored when building the query vector.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet, l2_normalize
from recemb.errors import ConfigError, NotFittedError, RecembError
from recemb.eval.scorers import QueryBatch
from recemb.pooling import QUERY_MODES, csr_weights, weighted_mean

MISSING_SCORE = np.float32(-1e30)
SCORINGS = ("cosine", "dot")


def _check_scoring(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {SCORINGS}, got {scoring!r} (eval.scoring)")


class CatalogueMatrix:
    """The item set's rows aligned to a catalogue.

    Attributes:
        matrix: ``[N, D]`` float32, row i = catalogue item i's vector (unit
            norm under cosine scoring), zeros where the set has no vector.
        known: ``[N]`` bool, True where the set has a vector.
    """

    def __init__(self, items: EmbeddingSet, catalogue: Vocab, scoring: str, where: str):
        rows = items.lookup(pl.Series("id", catalogue.ids.tolist(), dtype=pl.String))
        self.known = rows >= 0
        if not self.known.any():
            raise RecembError(
                f"{where}: none of the {len(catalogue)} catalogue items has a vector in {items!r}; "
                "the EmbeddingSet was trained on another dataset (check eval.embeddings and data.prepared)"
            )
        matrix = np.zeros((len(catalogue), items.dim), dtype=np.float32)
        matrix[self.known] = items.vectors[rows[self.known]]
        self.matrix = l2_normalize(matrix) if scoring == "cosine" else matrix
        self.coverage = float(self.known.mean())

    def score(self, q: np.ndarray) -> np.ndarray:
        """``[B, D]`` query vectors -> ``[B, N]`` float32 scores."""
        scores = (q @ self.matrix.T).astype(np.float32, copy=False)
        scores[:, ~self.known] = MISSING_SCORE
        return scores


def query_weights(queries: QueryBatch, known: np.ndarray, mode: str, last_n: int = 5) -> np.ndarray:
    """``[T]`` float32 weight of each query position, vectorised over the CSR batch.

    Only items with a vector (``known[item]``) get a weight. With p the
    position in a query of length L (the target is position L):

    - ``last``: 1 for the most recent known item, else 0
    - ``mean``: 1 for every known item
    - ``mean_last_n``: 1 for the ``last_n`` most recent known items
    - ``recency``: 1 / (L - p), the distance to the target (DESIGN.md §7)
    """
    if mode not in QUERY_MODES:
        raise ConfigError(f"query must be one of {QUERY_MODES}, got {mode!r} (eval.query)")
    if mode != "recency":
        # The same recency index j as the retrieval layer's, so last / mean / mean_last_n
        # weigh items exactly as served.
        return csr_weights(queries.items, queries.offsets, known, mode, last_n)
    offsets = queries.offsets.astype(np.int64)
    lengths = np.diff(offsets)
    T = int(offsets[-1] - offsets[0])
    if T == 0:
        return np.zeros(0, dtype=np.float32)
    items = queries.items[offsets[0] : offsets[-1]]
    starts = np.repeat(offsets[:-1] - offsets[0], lengths)
    length_at = np.repeat(lengths, lengths)
    pos = np.arange(T) - starts
    # Distance to the target over all positions (DESIGN.md §7's w = 1/(i - p)),
    # not over known items as the serving query does.
    return (known[items] / (length_at - pos)).astype(np.float32)


def query_vectors(matrix: np.ndarray, queries: QueryBatch, weights: np.ndarray) -> np.ndarray:
    """``[B, D]`` weighted mean of the query items' rows of ``matrix`` ``[N, D]``.

    A query with no weighted item gets a zero vector (every item then ties).
    """
    return weighted_mean(matrix, queries.items, queries.offsets, weights)


class EmbeddingScorer:
    """Scores the catalogue from an item EmbeddingSet (item2vec, two-tower items, peers).

    Args:
        embeddings: item vectors; ids are matched to the catalogue's item ids.
        query: how a query's items become one vector: ``last``, ``mean``,
            ``mean_last_n`` or ``recency`` (see :func:`query_weights`).
        last_n: N of ``mean_last_n``.
        scoring: ``cosine`` (items and query unit-normalised, as gensim's
            ``most_similar``) or ``dot`` (raw vectors).
        name: label of the scorer's row in the tables (default: the set's kind).
    """

    def __init__(
        self,
        embeddings: EmbeddingSet,
        query: Literal["last", "mean", "mean_last_n", "recency"] = "mean_last_n",
        last_n: int = 5,
        scoring: Literal["cosine", "dot"] = "cosine",
        name: str | None = None,
    ):
        if query not in QUERY_MODES:
            raise ConfigError(f"query must be one of {QUERY_MODES}, got {query!r} (eval.query)")
        if last_n < 1:
            raise ConfigError(f"last_n must be >= 1, got {last_n} (eval.query_last_n)")
        _check_scoring(scoring)
        self.embeddings = embeddings
        self.query = query
        self.last_n = last_n
        self.scoring = scoring
        self.name = name or embeddings.kind
        self._cat: CatalogueMatrix | None = None

    @property
    def coverage(self) -> float:
        """Share of catalogue items with a vector (after :meth:`fit`)."""
        return self._cat.coverage if self._cat else float("nan")

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> EmbeddingScorer:
        """Align the set's rows to ``catalogue``; ``train`` is not used (the vectors are already trained)."""
        self._cat = CatalogueMatrix(self.embeddings, catalogue, self.scoring, f"EmbeddingScorer {self.name!r}")
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]`` float32 scores of every catalogue item for each query."""
        if self._cat is None:
            raise NotFittedError(f"EmbeddingScorer {self.name!r}: call fit(train, catalogue) before score_queries")
        w = query_weights(queries, self._cat.known, self.query, self.last_n)
        q = query_vectors(self._cat.matrix, queries, w)
        if self.scoring == "cosine":
            q = l2_normalize(q)
        return self._cat.score(q)


class UserEmbeddingScorer:
    """Scores the catalogue with each query's user vector (two-tower, DESIGN.md §7).

    A user EmbeddingSet holds each user's vector computed from the train part
    of the split; a query is looked up by ``QueryBatch.user_ids``. A user
    without a vector gets a zero query (every item ties); ``unknown_users``
    counts them so a mismatched set is visible.

    Args:
        users: user vectors, ids = user ids.
        items: item vectors, ids = item ids.
        scoring: ``dot`` (the two-tower training score) or ``cosine``.
    """

    def __init__(
        self,
        users: EmbeddingSet,
        items: EmbeddingSet,
        scoring: Literal["cosine", "dot"] = "dot",
        name: str | None = None,
    ):
        _check_scoring(scoring)
        if users.dim != items.dim:
            raise RecembError(
                f"UserEmbeddingScorer: user vectors have dim {users.dim} but item vectors {items.dim}; "
                "pass the user and item sets of the same model"
            )
        self.users = users
        self.items = items
        self.scoring = scoring
        self.name = name or users.kind
        self.unknown_users = 0
        self._cat: CatalogueMatrix | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> UserEmbeddingScorer:
        self._cat = CatalogueMatrix(self.items, catalogue, self.scoring, f"UserEmbeddingScorer {self.name!r}")
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]`` float32 scores; needs ``queries.user_ids``."""
        if self._cat is None:
            raise NotFittedError(f"UserEmbeddingScorer {self.name!r}: call fit(train, catalogue) before score_queries")
        if queries.user_ids is None:
            raise RecembError(
                f"UserEmbeddingScorer {self.name!r}: the query batch carries no user_ids; "
                "user vectors only apply to per-user protocols (ml, cold, imp)"
            )
        rows = self.users.lookup(np.asarray(queries.user_ids))
        found = rows >= 0
        self.unknown_users += int((~found).sum())
        q = np.zeros((len(queries), self.users.dim), dtype=np.float32)
        q[found] = self.users.vectors[rows[found]]
        if self.scoring == "cosine":
            q = l2_normalize(q)
        return self._cat.score(q)
