"""Protocol runners on tiny hand-made data; expected numbers worked out in comments."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from recemb.data import schema
from recemb.data.splits import ImpressionSplit, LeaveLastOutSplit, SessionSplit, leave_last_out
from recemb.data.vocab import Vocab
from recemb.errors import ConfigError, RecembError
from recemb.eval.baselines import PopularityScorer
from recemb.eval.protocols import run_imp, run_ml, run_protocol, run_sess
from recemb.eval.queries import session_prefixes, user_histories
from recemb.eval.scorers import QueryBatch

ITEMS = ["a", "b", "c", "d", "e"]


class FixedScorer:
    """Item scores from a dict, the same for every query; records the queries it saw."""

    name = "fixed"

    def __init__(self, scores: dict[str, float]):
        self.table = scores
        self.seen: list[list[str]] = []

    def fit(self, train, catalogue):
        self.catalogue = catalogue
        self.row = np.array([self.table.get(i, 0.0) for i in catalogue.ids], dtype=np.float32)
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        ids = self.catalogue.ids
        self.seen += [[ids[i] for i in queries.query(b)] for b in range(len(queries))]
        return np.tile(self.row, (len(queries), 1))


class NoTieScorer:
    """Query-dependent scores without ties: seeded noise per item plus a bump on the last item."""

    name = "no_tie"

    def fit(self, train, catalogue):
        self.base = np.random.default_rng(7).random(len(catalogue)).astype(np.float32)
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        s = np.tile(self.base, (len(queries), 1))
        last = queries.last_items()
        rows = np.flatnonzero(last >= 0)
        s[rows, last[rows]] += 0.5 + 0.01 * queries.lengths()[rows]
        return s


def events(rows: list[tuple[str, str, int]], session: bool = False) -> pl.DataFrame:
    """Canonical events from (user, item, unix seconds); session_id = user when asked."""
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row")
    if session:
        df = df.with_columns(session_id=pl.col("user_id"))
    return schema.coerce(df, "events")


def ml_split() -> LeaveLastOutSplit:
    # u1: a, b | c (validation) | d (test);  u2: c, d | e (validation) | b (test)
    return leave_last_out(
        events(
            [
                ("u1", "a", 1),
                ("u1", "b", 2),
                ("u1", "c", 3),
                ("u1", "d", 4),
                ("u2", "c", 1),
                ("u2", "d", 2),
                ("u2", "e", 3),
                ("u2", "b", 4),
            ]
        )
    )


SCORES = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0}


def test_ml_masks_train_and_validation_items():
    split = ml_split()
    scorer = FixedScorer(SCORES)
    out = run_ml(split, scorer, Vocab(ITEMS), ks=(1, 2))
    # u1: a, b, c masked -> d (2.0) ranks 1 (unmasked it would rank 4).
    # u2: c, d, e masked -> a (5.0), b (4.0): b ranks 2.
    assert out["queries"] == 2
    assert out["recall@1"] == pytest.approx(0.5)
    assert out["recall@2"] == pytest.approx(1.0)
    assert out["mrr@2"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    # The query is the train history only, oldest first (validation never an input).
    assert sorted(scorer.seen) == [["a", "b"], ["c", "d"]]
    # top-1 lists: u1 -> d, u2 -> a: 2 of 5 items covered.
    assert out["coverage@1"] == pytest.approx(2 / 5)


def test_ml_target_outside_catalogue_is_a_miss():
    # No "d" in the catalogue: u1's target cannot be ranked (miss); u2 still ranks b at 2.
    out = run_ml(ml_split(), FixedScorer(SCORES), Vocab(["a", "b", "c", "e"]), ks=(2,))
    assert out["recall@2"] == pytest.approx(0.5)
    assert out["mrr@2"] == pytest.approx(0.5 / 2)


def test_ml_exclusion_rule_is_the_production_one():
    # u1 consumes a again as its test item; b is the validation item.
    split = leave_last_out(events([("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3)]))
    scorer, vocab = FixedScorer(SCORES), Vocab(ITEMS)
    # Seen items excluded, as the candidate job drops them: the re-click can never be shown (a miss).
    assert run_ml(split, scorer, vocab, ks=(1, 3), exclude_seen=True)["recall@3"] == 0.0
    # Seen items rankable: nothing masked, a (5.0) ranks 1.
    assert run_ml(split, scorer, vocab, ks=(1,), exclude_seen=False)["recall@1"] == 1.0
    # auto: by the train part's repeat share (one event here: no repeats) -> excluded.
    assert run_ml(split, scorer, vocab, ks=(3,))["recall@3"] == 0.0


def test_repeat_share_and_auto_exclusion():
    from recemb.data.repeats import KEEP_SEEN_FROM, repeat_share, resolve_exclude_seen

    # u1: a, b, a (1 repeat of 2 later events); u2: c, d (none): 1 / 3.
    ev = events([("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3), ("u2", "c", 1), ("u2", "d", 2)])
    assert repeat_share(ev) == pytest.approx(1 / 3)
    assert repeat_share(ev.lazy()) == pytest.approx(1 / 3)
    assert resolve_exclude_seen("auto", ev) is False and 1 / 3 >= KEEP_SEEN_FROM
    assert resolve_exclude_seen("auto", ev.filter(pl.col("user_id") == "u2")) is True
    assert resolve_exclude_seen(False, ev.filter(pl.col("user_id") == "u2")) is False
    assert repeat_share(ev.head(0)) == 0.0


def test_sess_prefixes_are_queries_and_nothing_is_masked():
    # s1: a, a, b (a repeat click); s2: c, e.
    test = events([("s1", "a", 1), ("s1", "a", 2), ("s1", "b", 3), ("s2", "c", 1), ("s2", "e", 2)], session=True)
    split = SessionSplit(train=test, test=test)
    scorer = FixedScorer(SCORES)
    out = run_sess(split, scorer, Vocab(ITEMS), ks=(1, 2))
    # queries: [a] -> a, [a, a] -> b, [c] -> e
    assert sorted(scorer.seen) == [["a"], ["a", "a"], ["c"]]
    # ranks without masking: a 1 (the repeat click counts), b 2, e 5.
    assert out["queries"] == 3
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@2"] == pytest.approx(2 / 3)
    assert out["mrr@2"] == pytest.approx((1 + 1 / 2) / 3)


def test_session_prefixes_point_into_the_session_rows():
    test = events([("s1", "a", 1), ("s1", "b", 2), ("s1", "z", 3), ("s1", "c", 4)], session=True)
    queries, targets = session_prefixes(test, Vocab(ITEMS))
    # One window per position >= 1 over the 4 rows, no copied prefixes.
    assert len(queries.items) == 4
    assert queries.starts.tolist() == [0, 0, 0] and queries.lengths.tolist() == [1, 2, 3]
    # z is not in the catalogue: target -1 (a miss), and dropped from the query.
    assert targets.tolist() == [1, -1, 2]
    batch = queries.batch(0, 3)
    assert [batch.query(b).tolist() for b in range(3)] == [[0], [0, 1], [0, 1]]


def test_user_histories_order_and_empty_users():
    ev = events([("u1", "b", 2), ("u1", "a", 1), ("u1", "10", 5), ("u1", "9", 5)])
    cat = Vocab(["a", "b", "9", "10"])
    qs = user_histories(ev, cat, ["nobody", "u1"])
    batch = qs.batch(0, 2)
    assert batch.query(0).tolist() == []
    # (ts, item_id) order; the ids are not all digits, so string order: "10" < "9".
    assert batch.query(1).tolist() == [0, 1, 3, 2]
    digits = events([("u1", "10", 5), ("u1", "9", 5)])
    # all-digit ids order as numbers on ts ties: 9 before 10.
    assert user_histories(digits, Vocab(["9", "10"]), ["u1"]).batch(0, 1).query(0).tolist() == [0, 1]


def _drop_times(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.endswith("_s")}


def test_batch_size_does_not_change_results():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 40, 600)
    items = rng.integers(0, 30, 600)
    ev = events([(f"u{u}", f"i{i}", t) for t, (u, i) in enumerate(zip(users, items))], session=True)
    cat = Vocab.from_ids(ev["item_id"])
    ml = leave_last_out(ev)
    sess = SessionSplit(train=ev, test=ev)
    small = _drop_times(run_ml(ml, NoTieScorer(), cat, batch_size=1))
    large = _drop_times(run_ml(ml, NoTieScorer(), cat, batch_size=4096))
    assert small == large and small["queries"] == 40
    small = _drop_times(run_sess(sess, NoTieScorer(), cat, batch_size=1))
    large = _drop_times(run_sess(sess, NoTieScorer(), cat, batch_size=7))
    assert small == large and small["queries"] == 600 - 40


def impressions(rows: list[tuple[str, str, str, int, bool]]) -> pl.DataFrame:
    """Canonical impressions from (impression, user, iso time, item index in ITEMS+x/y/z, clicked)."""
    df = pl.DataFrame(rows, schema=["impression_id", "user_id", "ts", "item_id", "clicked"], orient="row")
    df = df.with_columns(position=pl.int_range(pl.len()).over("impression_id").cast(pl.Int32))
    return schema.coerce(df, "impressions")


def imp_split() -> ImpressionSplit:
    history = events([("u1", "x", 1), ("u2", "y", 1)])
    train = impressions(
        [("i0", "u1", "2019-11-10T09:00:00", "x", True), ("i0", "u1", "2019-11-10T09:00:00", "y", False)]
    )
    test = impressions(
        [
            ("i1", "u1", "2019-11-10T10:00:00", "x", False),
            ("i1", "u1", "2019-11-10T10:00:00", "y", True),
            ("i2", "u2", "2019-11-10T11:00:00", "y", True),
            ("i2", "u2", "2019-11-10T11:00:00", "z", False),
            ("i2", "u2", "2019-11-10T11:00:00", "w", False),
        ]
    )
    return ImpressionSplit(history=history, train_impressions=train, test_impressions=test)


def test_imp_popularity_from_clicks_static_and_rolling():
    cat = Vocab(["x", "y", "z"])  # w is shown but not in the catalogue: scores -inf
    pop = PopularityScorer(events=["impression_click"])
    out = run_imp(imp_split(), pop, cat, ks=(1,))
    # Fitted once on i0: x = 1 click, y = z = 0.
    # i1: x (1, no click) above y (0, click): AUC 0, MRR 1/2.
    # i2: y and z tie at 0, w -inf: y beats w, ties z -> AUC (1 + 0.5) / 2 = 0.75.
    assert out["auc"] == pytest.approx((0 + 0.75) / 2)
    assert out["queries"] == 2 and out["refits"] == 1
    rolled = run_imp(imp_split(), pop, cat, ks=(1,), refit_every="1h")
    # Before i2's window the click on y in i1 counts: y = 1 > z = 0 > w -> AUC 1.
    assert rolled["auc"] == pytest.approx((0 + 1) / 2)
    assert rolled["refits"] == 2
    # CTR@1: i1 shows x first (no click), i2 shows y first (click) -> 1/2.
    assert rolled["ctr@1"] == pytest.approx(0.5)


def test_imp_gathers_only_shown_items_from_the_users_history_query():
    scorer = FixedScorer({"x": 1.0, "y": 2.0, "z": 3.0})
    out = run_imp(imp_split(), scorer, Vocab(["x", "y", "z"]), ks=(1,), fit_on="history")
    # i1: y (2) > x (1), y clicked -> AUC 1; i2: z (3) > y (2) > w, y clicked -> AUC 1/2.
    assert out["auc"] == pytest.approx(0.75)
    assert sorted(scorer.seen) == [["x"], ["y"]]


def test_run_protocol_dispatch_and_errors():
    out = run_protocol("ml", ml_split(), FixedScorer(SCORES), Vocab(ITEMS), ks=(2,))
    assert out["recall@2"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="unknown evaluation protocol"):
        run_protocol("nope", ml_split(), FixedScorer(SCORES), Vocab(ITEMS))
    with pytest.raises(ConfigError, match="needs a SessionSplit"):
        run_protocol("sess", ml_split(), FixedScorer(SCORES), Vocab(ITEMS))


def test_scorer_with_wrong_shape_is_named():
    class Bad(FixedScorer):
        def score_queries(self, queries):
            return np.zeros((len(queries), 2), dtype=np.float32)

    with pytest.raises(RecembError, match=r"expected \[B, N\]"):
        run_ml(ml_split(), Bad(SCORES), Vocab(ITEMS))
