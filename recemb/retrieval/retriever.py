"""The Retriever: user history -> query vector -> top-k -> filter -> blend -> top up.

Batch candidate generation calls :meth:`Retriever.recommend_batch`
(``recommend`` and ``similar_items`` are one-row calls of it). The online
service answers one request at a time with :class:`serving.query.OnlineRetriever`,
a numpy-only second implementation of the same steps over the same Retriever
object, kept equal to this one by tests/test_serving.py.

Per call, for each source (e.g. ``"item2vec"``, ``"two_tower"``):

1. query vector per user: the user's own vector when the source has user
   vectors and knows the user, else a weighted mean of the vectors of the
   history items the source knows (``query`` mode, below). For cosine the
   item vectors are unit-normalised first, so each item counts equally.
2. ``index.search(queries, k + margin)``, margin = the user's exclusions
   + the blocked items, so that filtering still leaves k (queries are
   grouped in power-of-two buckets of that width).
3. drop seen (history, when ``exclude_seen``), per-user ``exclude`` and
   globally ``blocked`` items.

Blending with quotas (priority order = order of ``sources``): source 1
takes its best ``quota_1`` items, source 2 its best ``quota_2`` items not
already taken, ...; free places are then filled from all sources' leftovers
by (rank within source, source order), then from popularity (also for users
with no usable history: unknown user, unknown items). The final list is
interleaved by (pick rank, source order). Scores are each source's own
similarity (not comparable across sources); popularity rows score
``1 / (1 + popularity rank)``.

Query modes over the known history items, ``j`` = 0 for the most recent:
``last`` (j = 0 only), ``mean`` (all), ``mean_last_n`` (j < last_n),
``recency`` (weight 1 / (j + 1)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recemb.embeddings import EmbeddingSet
from recemb.errors import RecembError
from recemb.index.base import Index
from recemb.retrieval.query import QUERY_MODES, query_weights
from recemb.vectors import l2_normalize

POPULARITY = "popularity"
_OUT_SCHEMA = {
    "row": pl.Int64,
    "rank": pl.Int32,
    "item_id": pl.String,
    "score": pl.Float32,
    "source": pl.String,
}


@dataclass
class Source:
    """One retrieval source: item vectors, an index over the same rows, optional user vectors.

    Attributes:
        items: item EmbeddingSet; ``items.vectors [N, D]``, row i = index row i.
        index: any :class:`~recemb.index.base.Index` built on those rows.
        users: optional user EmbeddingSet ``[U, D]`` (two-tower) used as the
            query for known user ids.
    """

    items: EmbeddingSet
    index: Index
    users: EmbeddingSet | None = None

    def __post_init__(self) -> None:
        if self.index.count != len(self.items) or self.index.dim != self.items.dim:
            raise RecembError(
                f"index holds {self.index.count} x {self.index.dim} but the item EmbeddingSet has "
                f"{len(self.items)} x {self.items.dim}; export the index from this EmbeddingSet "
                "(`recemb export CONFIG`)"
            )
        if self.users is not None and self.users.dim != self.items.dim:
            raise RecembError(
                f"user vectors have dim {self.users.dim}, item vectors {self.items.dim}; use one model's pair"
            )
        self.ids = pl.Series("item_id", self.items.ids.tolist(), dtype=pl.String)


class Retriever:
    """Candidates for users and similar items, from one or more sources.

    Args:
        sources: ``{name: Source}`` or ``{name: (EmbeddingSet, Index)}``; the
            order is the blending priority.
        popularity: item ids, most popular first (the fallback).
        query: how a history becomes a query vector: one of ``QUERY_MODES``.
        last_n: window of ``mean_last_n``.
        quotas: default per-source quotas (see :meth:`recommend_batch`).
        exclude_seen: drop the history's items from the results.
    """

    def __init__(
        self,
        sources: Mapping[str, Source | tuple[EmbeddingSet, Index]],
        popularity: Sequence[str] | pl.Series | np.ndarray = (),
        query: str = "mean_last_n",
        last_n: int = 5,
        quotas: Mapping[str, int | float] | None = None,
        exclude_seen: bool = True,
    ):
        if not sources:
            raise RecembError("Retriever needs at least one source, e.g. {'item2vec': (EmbeddingSet, Index)}")
        self.sources: dict[str, Source] = {}
        for name, src in sources.items():
            if name == POPULARITY:
                raise RecembError(f"source name {POPULARITY!r} is reserved for the fallback; rename the source")
            self.sources[name] = src if isinstance(src, Source) else Source(*src)
        check_query(query, last_n)
        self.query, self.last_n = query, int(last_n)
        self.quotas = quotas
        self.exclude_seen = exclude_seen
        pop = pl.Series(
            "item_id",
            list(popularity) if not isinstance(popularity, pl.Series) else popularity,
            dtype=pl.String,
        )
        self.popularity = (
            pl.DataFrame({"item_id": pop})
            .unique("item_id", keep="first", maintain_order=True)
            .with_row_index("pop_rank")
        )

    # ----------------------------------------------------------------- public
    def recommend(
        self,
        history: Sequence[str],
        k: int,
        exclude: Sequence[str] = (),
        blocked: Sequence[str] = (),
        quotas: Mapping[str, int | float] | None = None,
        user_id: str | None = None,
        query: str | None = None,
    ) -> list[tuple[str, float, str]]:
        """Top-k ``(item_id, score, source)`` for one user from their recent items (oldest first)."""
        df = self.recommend_batch(
            [list(history)],
            k,
            exclude=[list(exclude)],
            blocked=blocked,
            quotas=quotas,
            user_ids=None if user_id is None else [user_id],
            query=query,
        )
        return list(zip(df["item_id"].to_list(), df["score"].to_list(), df["source"].to_list()))

    def similar_items(
        self,
        item_id: str,
        k: int,
        blocked: Sequence[str] = (),
        quotas: Mapping[str, int | float] | None = None,
    ) -> list[tuple[str, float, str]]:
        """Top-k items most similar to ``item_id`` (never the item itself); popularity if unknown."""
        df = self._frame([[item_id]], k, None, blocked, quotas, None, "last", exclude_seen=True)
        return list(zip(df["item_id"].to_list(), df["score"].to_list(), df["source"].to_list()))

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Sequence[str]] | None = None,
        blocked: Sequence[str] = (),
        quotas: Mapping[str, int | float] | None = None,
        user_ids: Sequence[str] | None = None,
        query: str | None = None,
    ) -> pl.DataFrame:
        """Candidates for ``B`` users at once.

        Args:
            histories: ``B`` lists of item ids, oldest first (may be empty).
            k: candidates per user.
            exclude: ``B`` lists of extra item ids to drop per user.
            blocked: item ids dropped for everyone.
            quotas: ``{source: count}`` (ints) or ``{source: fraction of k}``
                (floats); default: the Retriever's, else k split evenly.
            user_ids: ``B`` user ids; used as the query for sources with
                user vectors, and as the output's ``user_id`` column.
            query: override the Retriever's query mode for this call.

        Returns:
            DataFrame ``[user_id | row, rank (i32, 1-based), item_id, score (f32), source]``,
            ``k`` rows per user unless the catalogue and popularity run out,
            sorted by user then rank.
        """
        if user_ids is not None and len(user_ids) != len(histories):
            raise RecembError(f"user_ids has {len(user_ids)} entries but histories has {len(histories)}; one per user")
        df = self._frame(histories, k, exclude, blocked, quotas, user_ids, query, self.exclude_seen)
        if user_ids is None:
            return df
        users = pl.Series("user_id", list(user_ids), dtype=pl.String)
        return df.with_columns(users.gather(df["row"]).alias("user_id")).select(
            "user_id", "rank", "item_id", "score", "source"
        )

    # --------------------------------------------------------------- internals
    def _frame(self, histories, k, exclude, blocked, quotas, user_ids, query, exclude_seen) -> pl.DataFrame:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise RecembError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        query = query or self.query
        check_query(query, self.last_n)
        b = len(histories)
        if exclude is not None and len(exclude) != b:
            raise RecembError(f"exclude has {len(exclude)} lists but histories has {b}; one list per user")
        hist = _long(histories, "history")
        excl = hist.select("row", "item_id") if exclude_seen else hist.clear().select("row", "item_id")
        if exclude is not None:
            excl = pl.concat([excl, _long(exclude, "exclude").select("row", "item_id")])
        excl = excl.unique()
        blocked_s = pl.Series("item_id", list(blocked), dtype=pl.String).unique()
        n_excl = np.zeros(b, dtype=np.int64)
        if excl.height:
            per_row = excl.group_by("row").len()
            n_excl[per_row["row"].to_numpy()] = per_row["len"].to_numpy()
        margin_rows = n_excl + blocked_s.len()
        margin = int(margin_rows.max()) if b else 0
        quota = self.quotas_for(k, quotas if quotas is not None else self.quotas)

        cands = []
        for order, (name, src) in enumerate(self.sources.items()):
            rows, q = self._queries(src, hist, b, user_ids, query)
            if rows.size == 0:
                continue
            c = self._search(src.index, rows, q, k + margin_rows[rows])
            c = (
                c.with_columns(src.ids.gather(c["item_row"]).alias("item_id"))
                .join(excl, on=["row", "item_id"], how="anti")
                .filter(~pl.col("item_id").is_in(blocked_s.implode()))
                .with_columns(
                    (pl.int_range(pl.len()).over("row")).alias("srank"),
                    pl.lit(name).alias("source"),
                    pl.lit(order).alias("order"),
                )
                .filter(pl.col("srank") < k)
                .select("row", "item_id", "score", "source", "order", "srank")
            )
            cands.append(c)
        picked = self._blend(cands, quota, k)
        picked = self._top_up(picked, b, k, excl, blocked_s, margin)
        return (
            picked.sort(["row", "phase", "pick", "order"])
            .with_columns(pl.int_range(1, pl.len() + 1).over("row").cast(pl.Int32).alias("rank"))
            .filter(pl.col("rank") <= k)
            .select(
                pl.col("row").cast(pl.Int64),
                "rank",
                "item_id",
                pl.col("score").cast(pl.Float32),
                "source",
            )
        )

    @staticmethod
    def _search(index: Index, rows: np.ndarray, q: np.ndarray, want: np.ndarray) -> pl.DataFrame:
        """Search each query for its own ``want [M]`` results, in power-of-two buckets of k.

        One long history must not make every user's search as wide as its
        own (Annoy's cost grows with k), so queries are grouped by
        ``2**ceil(log2(want))``. Returns ``[row, item_row, score]``, best first per row.
        """
        bucket = np.minimum(2 ** np.ceil(np.log2(np.maximum(want, 1))).astype(np.int64), index.count)
        parts = []
        for kk in np.unique(bucket):
            sel = np.flatnonzero(bucket == kk)
            found, scores = index.search(q[sel], int(kk))
            parts.append(
                pl.DataFrame(
                    {
                        "row": np.repeat(rows[sel], kk),
                        "item_row": found.ravel(),
                        "score": scores.ravel(),
                    }
                )
            )
        return pl.concat(parts).filter(pl.col("item_row") >= 0).sort("row", maintain_order=True)

    def quotas_for(self, k: int, quotas: Mapping[str, int | float] | None) -> dict[str, int]:
        """``{source: places}`` of a k-long list: ``quotas`` (counts, or fractions of k) checked, or k split evenly."""
        names = list(self.sources)
        if quotas is None:
            base, extra = divmod(k, len(names))
            return {n: base + (i < extra) for i, n in enumerate(names)}
        unknown = set(quotas) - set(names)
        if unknown:
            raise RecembError(f"quotas name unknown sources {sorted(unknown)}; sources are {names}")
        out = {}
        for n in names:
            v = quotas.get(n, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or v < 0:
                raise RecembError(f"quota for source {n!r} must be a count >= 0 or a fraction of k, got {v!r}")
            out[n] = int(v) if isinstance(v, (int, np.integer)) else int(np.floor(float(v) * k))
        return out

    def _queries(self, src: Source, hist: pl.DataFrame, b: int, user_ids, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """``(rows [M], queries [M, D])`` for the M users this source can serve."""
        d = src.items.dim
        have = np.zeros(b, dtype=bool)
        q = np.zeros((b, d), dtype=np.float32)
        if src.users is not None and user_ids is not None:
            urow = src.users.lookup(pl.Series(list(user_ids), dtype=pl.String))
            have = urow >= 0
            q[have] = np.asarray(src.users.vectors[urow[have]], dtype=np.float32)
        if hist.height:
            h = hist.with_columns(pl.Series("item_row", src.items.lookup(hist["item_id"]))).filter(
                (pl.col("item_row") >= 0) & ~pl.col("row").is_in(pl.Series(np.flatnonzero(have)).implode())
            )
            h = h.sort(["row", "pos"]).with_columns(
                j=pl.int_range(pl.len()).reverse().over("row")  # 0 = most recent known item
            )
            h = h.with_columns(w=pl.Series(query_weights(h["j"].to_numpy(), mode, self.last_n)))
            h = h.filter(pl.col("w") > 0)
            if h.height:
                v = np.asarray(src.items.vectors[h["item_row"].to_numpy()], dtype=np.float32)
                if src.index.metric == "cosine":
                    v = l2_normalize(v)
                w = h["w"].to_numpy().astype(np.float32)
                r = h["row"].to_numpy()
                starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
                sums = np.add.reduceat(v * w[:, None], starts, axis=0)
                wsum = np.add.reduceat(w, starts)
                q[r[starts]] = sums / wsum[:, None]
                have[r[starts]] = True
        rows = np.flatnonzero(have)
        return rows, q[rows]

    @staticmethod
    def _blend(cands: list[pl.DataFrame], quota: dict[str, int], k: int) -> pl.DataFrame:
        """Quota picks in priority order, then leftovers by (srank, order).

        Columns: row, item_id, score, source, order, phase, pick.
        """
        cols = ["row", "item_id", "score", "source", "order", "phase", "pick"]
        empty = pl.DataFrame(
            schema={
                "row": pl.Int64,
                "item_id": pl.String,
                "score": pl.Float32,
                "source": pl.String,
                "order": pl.Int32,
                "phase": pl.Int32,
                "pick": pl.Int64,
            }
        )
        picked = [empty]
        taken = empty.select("row", "item_id")
        for c in cands:
            name = c["source"][0] if c.height else None
            if name is None:
                continue
            p = (
                c.join(taken, on=["row", "item_id"], how="anti")
                .with_columns(pl.int_range(pl.len()).over("row").alias("pick"), pl.lit(0).alias("phase"))
                .filter(pl.col("pick") < quota[name])
            )
            picked.append(p.select(cols))
            taken = pl.concat([taken, p.select("row", "item_id")])
        if cands:
            have = pl.concat(picked, how="vertical_relaxed").group_by("row").len()
            rest = (
                pl.concat(cands, how="vertical_relaxed")
                .join(taken, on=["row", "item_id"], how="anti")
                .sort(["row", "srank", "order"])
                .unique(["row", "item_id"], keep="first", maintain_order=True)
                .join(have, on="row", how="left")
                .with_columns(pl.int_range(pl.len()).over("row").alias("pick"), pl.lit(1).alias("phase"))
                .filter(pl.col("pick") < k - pl.col("len").fill_null(0))
            )
            picked.append(rest.select(cols))
        return pl.concat(picked, how="vertical_relaxed")

    def _top_up(self, picked: pl.DataFrame, b: int, k: int, excl, blocked_s, margin: int) -> pl.DataFrame:
        """Fill each user's list to k with popular items not seen, excluded, blocked or already picked."""
        if self.popularity.height == 0:
            return picked
        need = (
            pl.DataFrame({"row": np.arange(b, dtype=np.int64)})
            .join(picked.group_by(pl.col("row").cast(pl.Int64)).len(), on="row", how="left")
            .with_columns((k - pl.col("len").fill_null(0)).alias("need"))
            .filter(pl.col("need") > 0)
            .select("row", "need")
        )
        if need.height == 0:
            return picked
        pop = self.popularity.head(k + margin)
        fill = (
            need.join(pop, how="cross")
            .join(excl.with_columns(pl.col("row").cast(pl.Int64)), on=["row", "item_id"], how="anti")
            .filter(~pl.col("item_id").is_in(blocked_s.implode()))
            .join(
                picked.select(pl.col("row").cast(pl.Int64), "item_id"),
                on=["row", "item_id"],
                how="anti",
            )
            .sort(["row", "pop_rank"])
            .with_columns(pl.int_range(pl.len()).over("row").alias("pick"))
            .filter(pl.col("pick") < pl.col("need"))
            .select(
                "row",
                "item_id",
                (1.0 / (1.0 + pl.col("pop_rank").cast(pl.Float32))).alias("score"),
                pl.lit(POPULARITY).alias("source"),
                pl.lit(len(self.sources)).alias("order"),
                pl.lit(2).alias("phase"),
                "pick",
            )
        )
        return pl.concat([picked.with_columns(pl.col("row").cast(pl.Int64)), fill], how="vertical_relaxed")


def _long(lists: Sequence[Sequence[str]], what: str) -> pl.DataFrame:
    """``B`` lists of ids -> long frame ``[row i64, pos i64, item_id str]`` (empty lists vanish)."""
    try:
        s = pl.Series(what, [list(x) for x in lists], dtype=pl.List(pl.String))
    except (TypeError, pl.exceptions.PolarsError) as e:
        raise RecembError(f"{what} must be a list of lists of string item ids ({e})") from None
    return (
        pl.DataFrame({"item_id": s})
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64))
        .explode("item_id")
        .filter(pl.col("item_id").is_not_null())
        .with_columns(pl.int_range(pl.len()).over("row").cast(pl.Int64).alias("pos"))
    )


def check_query(query: str, last_n: int) -> None:
    """Raise a RecembError naming the argument unless ``query`` is a query mode and ``last_n >= 1``."""
    if query not in QUERY_MODES:
        raise RecembError(f"query must be one of {QUERY_MODES}, got {query!r}")
    if last_n < 1:
        raise RecembError(f"last_n must be >= 1, got {last_n}")
