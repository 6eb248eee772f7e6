import polars as pl
import pytest
from conftest import make_events

from recemb.data import schema
from recemb.data.sessions import sessionize
from recemb.data.splits import cold_item_split, impression_split, leave_last_out, session_split
from recemb.errors import DataValidationError

MIN = 60


def test_sessionize_by_gap_keeps_explicit_ids():
    ev = make_events(
        [
            ("u1", "a", 0, None),
            ("u1", "b", 10 * MIN, None),
            ("u1", "c", 50 * MIN, None),  # gap 40 > 30
            ("u2", "a", 0, "given"),
            ("u2", "b", 999 * MIN, "given"),
        ],
        session=True,
    )
    out = sessionize(ev, gap_minutes=30)
    sid = dict(zip(out["item_id"] + out["user_id"], out["session_id"]))
    assert sid["au1"] == sid["bu1"] == "u1:0" and sid["cu1"] == "u1:1"
    assert sid["au2"] == sid["bu2"] == "given"
    assert out.height == ev.height
    with pytest.raises(DataValidationError):
        sessionize(ev, gap_minutes=0)


def test_leave_last_out_orders_by_ts_then_item():
    ev = make_events(
        [
            ("u1", "a", 1),
            ("u1", "c", 3),
            ("u1", "b", 3),
            ("u1", "d", 2),  # order a, d, b, c (b<c at ts 3)
            ("u2", "x", 1),
            ("u2", "y", 2),  # < 3 events: train only
        ]
    )
    s = leave_last_out(ev)
    assert s.test.filter(pl.col("user_id") == "u1")["item_id"].to_list() == ["c"]
    assert s.validation["item_id"].to_list() == ["b"]
    assert sorted(s.train.filter(pl.col("user_id") == "u1")["item_id"]) == ["a", "d"]
    assert s.train.filter(pl.col("user_id") == "u2").height == 2
    assert s.train.height + s.validation.height + s.test.height == ev.height


def test_session_split_uses_source_split_and_filters():
    ev = make_events(
        [
            ("s1", "a", 1, "s1"),
            ("s1", "b", 2, "s1"),
            ("s2", "a", 5, "s2"),
            ("s2", "z", 6, "s2"),
            ("s2", "b", 7, "s2"),  # z unseen in train: dropped
            ("s3", "z", 8, "s3"),
            ("s3", "a", 9, "s3"),  # only one known event left: session dropped
        ],
        session=True,
    ).with_columns(split=pl.Series(["train"] * 2 + ["test"] * 5))
    s = session_split(ev)
    assert s.train["item_id"].to_list() == ["a", "b"]
    assert s.test["item_id"].to_list() == ["a", "b"] and s.test["session_id"].unique().to_list() == ["s2"]


def test_session_split_by_time_without_split_column():
    rows = [(f"s{i}", it, 10 * i + j, f"s{i}") for i in range(10) for j, it in enumerate("ab")]
    s = session_split(make_events(rows, session=True), test_fraction=0.2)
    assert sorted(s.test["session_id"].unique()) == ["s8", "s9"]
    assert s.train["session_id"].n_unique() == 8


def test_impression_split_by_time():
    imp = schema.coerce(
        pl.DataFrame(
            {
                "impression_id": ["i1", "i1", "i2", "i2", "i3", "i3", "i4", "i4"],
                "user_id": ["u"] * 8,
                "ts": [1, 1, 2, 2, 3, 3, 4, 4],
                "item_id": list("abababab"),
                "position": [0, 1] * 4,
                "clicked": [True, False] * 4,
            }
        ),
        "impressions",
    )
    s = impression_split(make_events([("u", "a", 0)]), imp, test_fraction=0.5)
    assert s.train_impressions["impression_id"].unique().sort().to_list() == ["i1", "i2"]
    assert s.test_impressions["impression_id"].unique().sort().to_list() == ["i3", "i4"]


def test_cold_split_removes_cold_items_from_train():
    rows = [(f"u{u}", f"i{(u + j) % 20}", j) for u in range(30) for j in range(6)]
    s = cold_item_split(make_events(rows), fraction=0.2, seed=3)
    assert s.cold_items.len() == 4
    assert not s.train["item_id"].is_in(s.cold_items.implode()).any()
    assert s.test.height > 0 and s.test["item_id"].is_in(s.cold_items.implode()).all()
    again = cold_item_split(make_events(rows), fraction=0.2, seed=3)
    assert again.cold_items.to_list() == s.cold_items.to_list()


def test_cold_folds_hold_out_disjoint_items_and_every_test_user_once():
    rows = [(f"u{u}", f"i{(u + j) % 20}", j) for u in range(30) for j in range(6)]
    ev = make_events(rows)
    folds = [cold_item_split(ev, fraction=0.25, seed=3, fold=f) for f in range(4)]
    cold = [set(f.cold_items.to_list()) for f in folds]
    assert all(len(c) == 5 for c in cold) and set.union(*cold) == {f"i{i}" for i in range(20)}
    assert sum(len(c) for c in cold) == 20  # disjoint
    tested = [u for f in folds for u in f.test["user_id"].to_list()]
    assert sorted(tested) == sorted(ev["user_id"].unique().to_list())  # each user's test item is cold once
    with pytest.raises(DataValidationError, match="at most 4 folds"):
        cold_item_split(ev, fraction=0.25, seed=3, fold=4)


def test_leave_last_out_orders_digit_ids_numerically():
    # Ties on ts are broken by item id; "10" must come after "9" (numeric), as the
    # reference figures of DESIGN.md §7 assume (a string sort picked other test items).
    ev = make_events([("u", "10", 5), ("u", "9", 5), ("u", "100", 5), ("u", "2", 1)])
    s = leave_last_out(ev)
    assert s.test["item_id"].to_list() == ["100"]
    assert s.validation["item_id"].to_list() == ["10"]
