"""The scorer interface every model and baseline implements for evaluation.

A scorer is fitted on canonical training events and then scores the whole
catalogue for a batch of queries. A query is a sequence of catalogue indices
(a user's train history, or a session prefix), oldest first. The protocol
runners (recemb.eval.protocols) build the queries, mask, rank and measure;
scorers only produce scores, so a new model needs ``fit`` and
``score_queries`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab


@dataclass(frozen=True)
class QueryBatch:
    """A batch of B variable-length queries in CSR layout.

    Attributes:
        items: ``[T]`` int64 catalogue indices of all queries concatenated,
            oldest first within a query (unknown items already removed).
        offsets: ``[B + 1]`` int64; query b is ``items[offsets[b]:offsets[b+1]]``.
        user_ids: ``[B]`` string ids of the users/sessions (for scorers that
            hold per-user vectors, e.g. a user EmbeddingSet), or None.
        ts: ``[T]`` float64 event times of ``items`` (seconds since the epoch),
            for scorers that read the gaps between events, or None.
        at: ``[B]`` float64 time of each query (e.g. the impression's), or None
            where the protocol has none that would not reveal the target's.
    """

    items: np.ndarray
    offsets: np.ndarray
    user_ids: np.ndarray | None = None
    ts: np.ndarray | None = None
    at: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """``[B]`` number of items in each query."""
        return np.diff(self.offsets)

    def query(self, b: int) -> np.ndarray:
        return self.items[self.offsets[b] : self.offsets[b + 1]]

    def last_items(self) -> np.ndarray:
        """``[B]`` the most recent item of each query (-1 for an empty query)."""
        lengths = self.lengths()
        out = np.full(len(self), -1, dtype=np.int64)
        nonempty = lengths > 0
        out[nonempty] = self.items[self.offsets[1:][nonempty] - 1]
        return out


@runtime_checkable
class Scorer(Protocol):
    """Scores the catalogue for query batches.

    ``name`` labels the scorer's row in the evaluation tables.
    """

    name: str

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> Scorer:
        """Learn from canonical train events; ``catalogue`` fixes the item index space."""
        ...

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """Return ``[B, N]`` float32 scores over the N catalogue items (higher is better)."""
        ...


class Prefitted:
    """A fitted scorer that a protocol runner must not refit (its ``fit`` does nothing).

    For scoring one fit several ways: a tuning trial's epochs, evaluate's query choice.
    """

    def __init__(self, scorer: Scorer):
        self.scorer, self.name = scorer, scorer.name

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> Prefitted:
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        return self.scorer.score_queries(queries)
