"""Baseline scorers every evaluation reports beside the model (DESIGN.md §7).

==================  =========================================================
scorer              score of catalogue item j for a query
==================  =========================================================
PopularityScorer    number of train events on j (the same for every query)
ItemKNNScorer       sum over query items q of w_q * cos(q, j), cosine over the
                    binary (user or session) x item incidence of train:
                    cos(i, j) = C_ij / sqrt(C_ii C_jj), C_ij = number of
                    users/sessions holding both i and j
RandomScorer        uniform noise (sanity check: AUC 0.5)
==================  =========================================================

ItemKNN query weights ``w``: ``"sum"`` 1 for every query item (the P-ML
reference), ``"last"`` 1 for the most recent item only (P-SESS "last item"),
``"recency"`` ``1 / (i - p)`` for the item at position p of a query of length
i (most recent weight 1; P-SESS "recency-weighted prefix"). An item that
occurs twice in a query contributes twice.

Orientation: scores are ``[B, N]`` (queries x catalogue items); the item-item
similarity is an ``[N, N]`` scipy CSR matrix, never densified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

from recemb.data.vocab import Vocab
from recemb.errors import ConfigError, DataValidationError, NotFittedError
from recemb.eval.scorers import QueryBatch
from recemb.retrieval.covisit import cosine_cooccurrence


def _item_indices(train: pl.DataFrame, catalogue: Vocab, who: str) -> np.ndarray:
    if "item_id" not in train.columns:
        raise DataValidationError(f"{who}.fit: train events lack column 'item_id'; it has {train.columns}")
    return catalogue.lookup(train["item_id"])


class PopularityScorer:
    """Train event count per catalogue item; every query gets the same ``[N]`` row.

    Args:
        events: count only events whose ``event`` column is one of these
            (e.g. ``["impression_click"]`` for P-IMP); None counts every event.
    """

    def __init__(self, events: Sequence[str] | None = None, name: str = "popularity"):
        self.events = None if events is None else list(events)
        self.name = name
        self.counts: np.ndarray | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> PopularityScorer:
        if self.events is not None:
            if "event" not in train.columns:
                raise DataValidationError(f"{self.name}.fit: filtering on events={self.events} needs an 'event' column")
            train = train.filter(pl.col("event").is_in(self.events))
        idx = _item_indices(train, catalogue, self.name)
        idx = idx[idx >= 0]  # events on items outside the catalogue cannot be scored
        self.counts = np.bincount(idx, minlength=len(catalogue)).astype(np.float32)
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]`` float32: the count row repeated (a writable copy; runners mask in place)."""
        if self.counts is None:
            raise NotFittedError(f"{self.name}: call fit() before score_queries()")
        return np.tile(self.counts, (len(queries), 1))


class ItemKNNScorer:
    """Item co-occurrence kNN (cosine over the binary unit x item incidence of train).

    Args:
        mode: ``"sum"``, ``"last"`` or ``"recency"`` (query item weights, see module doc).
        unit: ``"user"`` (P-ML: one incidence row per user) or ``"session"``
            (P-SESS: one per ``session_id``).
    """

    MODES = ("sum", "last", "recency")
    UNITS = ("user", "session")

    def __init__(self, mode: str = "sum", unit: str = "user", name: str | None = None):
        if mode not in self.MODES:
            raise ConfigError(f"ItemKNNScorer: mode must be one of {self.MODES}, got {mode!r}")
        if unit not in self.UNITS:
            raise ConfigError(f"ItemKNNScorer: unit must be one of {self.UNITS}, got {unit!r}")
        self.mode, self.unit = mode, unit
        self.name = name or f"item_knn_{mode}"
        self.sim: sp.csr_matrix | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> ItemKNNScorer:
        """Build the ``[N, N]`` cosine matrix from the distinct (unit, item) pairs of ``train``."""
        self.sim = cosine_cooccurrence(train, catalogue, self.unit, who=f"{self.name}.fit")
        return self

    def _fitted_sim(self, method: str) -> sp.csr_matrix:
        if self.sim is None:
            raise NotFittedError(f"{self.name}: call fit() before {method}()")
        return self.sim

    def query_weights(self, queries: QueryBatch) -> sp.csr_matrix:
        """``[B, N]`` sparse query weights (module doc), duplicates summed."""
        n = self._fitted_sim("query_weights").shape[0]
        lengths = queries.lengths()
        total = int(lengths.sum())
        # i = query length, p = position inside the query, for every query item.
        i = np.repeat(lengths, lengths)
        p = np.arange(total) - np.repeat(queries.offsets[:-1], lengths)
        if self.mode == "sum":
            w = np.ones(total, dtype=np.float32)
        elif self.mode == "last":
            w = (p == i - 1).astype(np.float32)
        else:
            w = (1.0 / (i - p)).astype(np.float32)
        rows = np.repeat(np.arange(len(queries)), lengths)
        return sp.csr_matrix((w, (rows, queries.items)), shape=(len(queries), n))

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]`` float32: query weights (``[B, N]`` sparse) times the cosine matrix."""
        sim = self._fitted_sim("score_queries")
        return np.asarray((self.query_weights(queries) @ sim).toarray(), dtype=np.float32)


class RandomScorer:
    """Uniform random scores from a seeded generator (each call draws new ones)."""

    def __init__(self, seed: int = 0, name: str = "random"):
        self.seed, self.name = seed, name
        self.n_items = 0
        self._rng = np.random.default_rng(seed)

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> RandomScorer:
        self.n_items = len(catalogue)
        self._rng = np.random.default_rng(self.seed)
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        return self._rng.random((len(queries), self.n_items), dtype=np.float32)
