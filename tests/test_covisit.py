"""Co-visitation source (issue 16, item 2): the knn-recency ranking, a checked artifact, served and exported."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from recemb.data import schema, splits
from recemb.data.vocab import Vocab
from recemb.eval.baselines import ItemKNNScorer
from recemb.eval.queries import session_prefixes
from recemb.retrieval.covisit import NEIGHBORS_FILE, WEIGHTS_FILE, CoVisitError, CoVisitTable
from recemb.retrieval.sources import CoVisitSource, load_source


def synthetic_sessions(n_sessions: int = 600, n_items: int = 80, seed: int = 0) -> pl.DataFrame:
    """Sessions of 2-8 clicks around a topic (items in blocks of 10), with repeats."""
    rng = np.random.default_rng(seed)
    rows, t = [], 0
    for s in range(n_sessions):
        topic = rng.integers(0, n_items // 10)
        for _ in range(rng.integers(2, 9)):
            item = topic * 10 + rng.integers(0, 10) if rng.random() < 0.8 else rng.integers(0, n_items)
            rows.append((f"u{s % 150}", f"i{item}", t, f"s{s}"))
            t += 60
        t += 3600
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "ts", "session_id"], orient="row")
    return schema.coerce(df, "events")


def test_ranking_equals_the_knn_recency_baseline_on_the_same_split():
    """With every neighbour kept, the source's top items per session prefix are the baseline's."""
    split = splits.session_split(synthetic_sessions())
    catalogue = Vocab.from_ids(split.train["item_id"])
    knn = ItemKNNScorer("recency", "session").fit(split.train, catalogue)
    table = CoVisitTable.build(split.train, unit="session", top=len(catalogue))
    queries, _targets = session_prefixes(split.test, catalogue)
    batch = next(iter(queries.batches(10_000)))[2]
    want = knn.score_queries(batch)
    histories = [catalogue.ids[batch.query(b)].tolist() for b in range(len(batch))]
    found = table.search(histories, np.full(len(histories), 20))
    compared = 0
    for b, f in enumerate(found):
        if f is None:
            assert not want[b].any()
            continue
        ids, scores = f
        np.testing.assert_allclose(scores, want[b][catalogue.lookup(list(ids))], rtol=1e-5)
        # Same top-20 scores as the baseline's dense row (ties may order differently).
        np.testing.assert_allclose(scores, np.sort(want[b][want[b] > 0])[::-1][: len(scores)], rtol=1e-5)
        compared += 1
    assert compared > 100
    # Truncated to each item's top 5, scores can only drop, never rise.
    small = CoVisitTable.build(split.train, unit="session", top=5).search(histories, np.full(len(histories), 20))
    for b, f_small in enumerate(small):
        if f_small is not None:
            assert (f_small[1] <= want[b][catalogue.lookup(list(f_small[0]))] + 1e-6).all()


def test_an_item_is_its_own_best_neighbour_and_units_resolve():
    ev = synthetic_sessions(200)
    table = CoVisitTable.build(ev, top=10)
    assert table.unit == "session" and table.top_m == 10
    assert (table.neighbors[:, 0] == np.arange(len(table))).all()
    np.testing.assert_allclose(table.weights[:, 0], 1.0, rtol=1e-6)
    assert CoVisitTable.build(ev.with_columns(session_id=pl.lit(None, pl.String)), top=10).unit == "user"
    with pytest.raises(Exception, match="empty"):
        CoVisitTable.build(ev.head(0))


def test_save_load_round_trip_is_memory_mapped(tmp_path):
    table = CoVisitTable.build(synthetic_sessions(200), top=12)
    manifest = table.save(tmp_path / "covisit")
    assert manifest["kind"] == "covisit" and manifest["count"] == len(table)
    src, m = load_source(tmp_path / "covisit")
    assert isinstance(src, CoVisitSource) and m["sha256"] == manifest["sha256"]
    assert isinstance(src.table.neighbors, np.memmap)
    hist = [["i1", "i2", "nope"], ["nope"], []]
    a, b = table.search(hist, np.array([5, 5, 5])), src.search(hist, np.array([5, 5, 5]))
    assert a[1] is None and b[1] is None and a[2] is None
    assert a[0][0].tolist() == b[0][0].tolist() and np.array_equal(a[0][1], b[0][1])


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda d: (d / NEIGHBORS_FILE).write_bytes((d / NEIGHBORS_FILE).read_bytes()[:-40]),
            "not a readable|shape|int32",
        ),
        (lambda d: np.save(d / NEIGHBORS_FILE, np.zeros((3, 3), np.int32)), "do not belong together"),
        (lambda d: np.save(d / WEIGHTS_FILE, np.load(d / WEIGHTS_FILE).astype(np.float64)), "do not belong together"),
        (lambda d: _edit_manifest(d, kind="annoy"), "not|kind"),
        (lambda d: _edit_manifest(d, schema_version=9), "schema_version"),
        (lambda d: _edit_manifest(d, count="many"), "count"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON|not a readable manifest"),
        (lambda d: (d / "ids.parquet").unlink(), "ids.parquet"),
        (lambda d: _rewrite(d, NEIGHBORS_FILE, lambda a: np.where(a == 3, 10_000, a)), "sha256|outside"),
        (lambda d: _rewrite(d, WEIGHTS_FILE, lambda a: np.where(a > 0.9, np.nan, a)), "sha256|NaN"),
    ],
)
def test_a_damaged_artifact_is_refused_with_a_clear_error(tmp_path, damage, match):
    d = tmp_path / "covisit"
    CoVisitTable.build(synthetic_sessions(200), top=8).save(d)
    damage(d)
    with pytest.raises(Exception, match=match) as e:
        load_source(d)
    assert "recemb export" in str(e.value)


def test_out_of_range_rows_refused_even_with_matching_checksums(tmp_path):
    d = tmp_path / "covisit"
    CoVisitTable.build(synthetic_sessions(200), top=8).save(d)
    _rewrite(d, NEIGHBORS_FILE, lambda a: np.where(a == 3, 10_000, a))
    from recemb.io import sha256_file

    _edit_manifest(
        d,
        sha256={
            **json.loads((d / "manifest.json").read_text())["sha256"],
            NEIGHBORS_FILE: sha256_file(d / NEIGHBORS_FILE),
        },
    )
    with pytest.raises(CoVisitError, match="outside"):
        CoVisitTable.load(d)


def _edit_manifest(d, **changes) -> None:
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(m | changes))


def _rewrite(d, name, change) -> None:
    np.save(d / name, change(np.load(d / name)))
