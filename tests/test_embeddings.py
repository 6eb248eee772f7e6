"""EmbeddingSet artifacts (DESIGN.md §5) and the embedding scorers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet, EmbeddingSetError
from recemb.eval.embedding_scorer import (
    MISSING_SCORE,
    EmbeddingScorer,
    UserEmbeddingScorer,
    query_weights,
)
from recemb.eval.scorers import QueryBatch


def _set(n: int = 6, d: int = 4, seed: int = 0) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    ids = [f"item{i}" for i in range(n)]
    return EmbeddingSet(
        ids, rng.normal(size=(n, d)).astype(np.float32), kind="test", config={"epochs": 3}, metrics={"loss": 0.5}
    )


@pytest.fixture
def saved(tmp_path):
    es = _set()
    return es, es.save(tmp_path / "emb")


def test_round_trip_and_access(saved):
    es, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["ids.parquet", "manifest.json", "vectors.npy"]
    back = EmbeddingSet.load(path)
    assert isinstance(back.vectors, np.memmap) and not back.vectors.flags.writeable
    np.testing.assert_array_equal(back.vectors, es.vectors)
    assert back.ids.tolist() == es.ids.tolist()
    assert (back.kind, back.metric, back.normalized, back.dim, len(back)) == ("test", "cosine", False, 4, 6)
    assert back.config == {"epochs": 3} and back.metrics == {"loss": 0.5}
    np.testing.assert_array_equal(back.vector("item3"), es.vectors[3])
    assert back.lookup(["item5", "nope", "item0"]).tolist() == [5, -1, 0]
    assert back.to_vocab().index("item2") == 2
    with pytest.raises(KeyError, match="nope"):
        back.vector("nope")


def test_readable_with_numpy_and_pyarrow_alone(saved):
    es, path = saved
    ids = pq.read_table(path / "ids.parquet").column("id").to_pylist()
    vectors = np.load(path / "vectors.npy", mmap_mode="r")
    manifest = json.loads((path / "manifest.json").read_text())
    assert ids == es.ids.tolist()
    assert vectors.dtype == np.float32 and vectors.shape == (6, 4) and vectors.flags.c_contiguous
    assert manifest["dim"] == 4 and manifest["count"] == 6 and manifest["schema_version"] == 1
    assert set(manifest["sha256"]) == {"ids.parquet", "vectors.npy"}


def test_save_replaces_old_set_atomically(saved, tmp_path):
    _, path = saved
    _set(n=3, seed=1).save(path)
    assert len(EmbeddingSet.load(path)) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _corrupt_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k)
        else:
            m[k] = v
    (path / "manifest.json").write_text(json.dumps(m))


def _rewrite_vectors(path, arr):
    np.save(path / "vectors.npy", arr)


def _rewrite_ids(path, ids):
    pq.write_table(pa.table({"id": pa.array(ids, type=pa.string())}), path / "ids.parquet")


CORRUPTIONS = {
    "missing vectors": (lambda p: (p / "vectors.npy").unlink(), r"vectors\.npy: missing"),
    "missing dir": (lambda p: shutil.rmtree(p), "no such EmbeddingSet directory"),
    "no schema version": (lambda p: _corrupt_manifest(p, schema_version=None), "no schema_version.*re-export"),
    "newer schema": (lambda p: _corrupt_manifest(p, schema_version=99), "newer recemb"),
    "bad json": (lambda p: (p / "manifest.json").write_text("{oops"), "not valid JSON"),
    "missing key": (lambda p: _corrupt_manifest(p, dim=None), "'dim' is missing"),
    "shape": (lambda p: _corrupt_manifest(p, dim=5), r"shape \(6, 4\).*dim=5"),
    "dtype": (lambda p: _rewrite_vectors(p, np.zeros((6, 4), np.float64)), "dtype is float64"),
    "truncated npy": (lambda p: (p / "vectors.npy").write_bytes(b"\x93NUMPY"), "not a readable .npy"),
    "sha mismatch": (
        lambda p: _rewrite_vectors(p, np.ones((6, 4), np.float32)),
        r"vectors\.npy: sha256 .* does not match",
    ),
    "ids count": (lambda p: _rewrite_ids(p, ["a", "b"]), "2 ids but manifest.json says count=6"),
    "ids column": (
        lambda p: pq.write_table(pa.table({"item": pa.array(list("abcdef"))}), p / "ids.parquet"),
        "exactly one string column 'id'",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_artifacts_fail_clearly(saved, case):
    _, path = saved
    corrupt, message = CORRUPTIONS[case]
    corrupt(path)
    with pytest.raises(EmbeddingSetError, match=message):
        EmbeddingSet.load(path)


def _fix_sha(path):
    from recemb.io import sha256_file

    _corrupt_manifest(path, sha256={n: sha256_file(path / n) for n in ("ids.parquet", "vectors.npy")})


def test_duplicate_ids_name_the_row(saved):
    _, path = saved
    _rewrite_ids(path, ["a", "b", "c", "b", "e", "f"])
    _fix_sha(path)
    with pytest.raises(EmbeddingSetError, match=r"'b' occurs more than once \(first at row 1\)"):
        EmbeddingSet.load(path)


def test_nan_vectors_name_the_first_bad_row(saved):
    es, path = saved
    bad = np.array(es.vectors)
    bad[4, 2] = np.nan
    bad[5, 0] = np.inf
    _rewrite_vectors(path, bad)
    _fix_sha(path)
    with pytest.raises(EmbeddingSetError, match=r"vectors\.npy: row 4 holds NaN or inf"):
        EmbeddingSet.load(path)
    # Without verification the (expensive) full scans are skipped.
    assert len(EmbeddingSet.load(path, verify=False)) == 6


def test_block_writer_writes_the_files_save_writes_and_nothing_on_error(tmp_path):
    from recemb.embeddings import write_embedding_set_blocks

    rng = np.random.default_rng(0)
    ids = pl.Series("id", [f"u{i}" for i in range(10)])
    vectors = rng.normal(size=(10, 4)).astype(np.float32)
    meta = {"kind": "users", "metric": "cosine", "normalized": False, "config": {"a": 1}}
    EmbeddingSet(ids, vectors, **meta).save(tmp_path / "saved")
    blocks = (vectors[i : i + 3] for i in range(0, 10, 3))  # 3 + 3 + 3 + 1 rows
    write_embedding_set_blocks(tmp_path / "blocks", ids, 4, blocks, **meta)
    for name in ("ids.parquet", "vectors.npy", "manifest.json"):
        assert (tmp_path / "blocks" / name).read_bytes() == (tmp_path / "saved" / name).read_bytes(), name
    np.testing.assert_array_equal(EmbeddingSet.load(tmp_path / "blocks").vectors, vectors)

    bad = vectors.copy()
    bad[7, 2] = np.nan
    cases = {
        "rows for 10 ids": [vectors[:9]],  # a row short
        "does not fit": [vectors, vectors[:1]],  # a row too many
        "row 7": [bad[:5], bad[5:]],  # NaN, named by its row
    }
    for message, parts in cases.items():
        with pytest.raises(EmbeddingSetError, match=message):
            write_embedding_set_blocks(tmp_path / "blocks", ids, 4, iter(parts), **meta)
        assert EmbeddingSet.load(tmp_path / "blocks").vectors.shape == (10, 4)  # the old set is intact
    with pytest.raises(EmbeddingSetError, match="more than once"):
        write_embedding_set_blocks(tmp_path / "dup", pl.Series("id", ["a", "a"]), 4, iter([vectors[:2]]), **meta)
    assert not (tmp_path / "dup").exists()


def test_constructor_rejects_bad_input():
    with pytest.raises(EmbeddingSetError, match="3 ids but 2 vector rows"):
        EmbeddingSet(["a", "b", "c"], np.zeros((2, 4)), kind="x")
    with pytest.raises(EmbeddingSetError, match="metric must be one of"):
        EmbeddingSet(["a"], np.zeros((1, 4)), kind="x", metric="hamming")
    with pytest.raises(EmbeddingSetError, match="2-D"):
        EmbeddingSet(["a"], np.zeros(4), kind="x")


# ------------------------------------------------------------------ scorers
def _batch(queries: list[list[int]], user_ids=None) -> QueryBatch:
    lengths = [len(q) for q in queries]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.array([i for q in queries for i in q], dtype=np.int64)
    return QueryBatch(items=items, offsets=offsets, user_ids=user_ids)


def test_query_weights_by_hand():
    # Query [0, 1, 2, 3] with item 2 unknown, an empty query, and [4].
    b = _batch([[0, 1, 2, 3], [], [4]])
    known = np.array([True, True, False, True, True])
    assert query_weights(b, known, "last").tolist() == [0, 0, 0, 1, 1]
    assert query_weights(b, known, "mean").tolist() == [1, 1, 0, 1, 1]
    # Last 2 known items: 1 and 3 (2 has no vector).
    assert query_weights(b, known, "mean_last_n", last_n=2).tolist() == [0, 1, 0, 1, 1]
    # 1 / (L - p): L = 4 -> 1/4, 1/3, (unknown) 0, 1; L = 1 -> 1.
    np.testing.assert_allclose(query_weights(b, known, "recency"), [0.25, 1 / 3, 0, 1, 1], rtol=1e-6)


def test_embedding_scorer_against_a_loop():
    es = _set(n=8, d=5, seed=3)
    # Catalogue: 6 of the set's items in another order plus 2 it does not know.
    cat = Vocab(["item5", "item0", "ghost", "item2", "item7", "item1", "zz", "item3"])
    queries = [[0, 3, 2, 5], [], [7], [1, 4, 5, 3, 0, 7]]
    b = _batch(queries)
    for scoring in ("cosine", "dot"):
        s = EmbeddingScorer(es, query="mean_last_n", last_n=3, scoring=scoring).fit(pl.DataFrame(), cat)
        got = s.score_queries(b)
        assert got.shape == (4, 8) and got.dtype == np.float32
        assert (got[:, [2, 6]] == MISSING_SCORE).all()
        rows = np.array([es.lookup([i])[0] for i in cat.ids])
        vec = np.array([es.vectors[r] if r >= 0 else np.zeros(5, np.float32) for r in rows])
        if scoring == "cosine":
            vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-30)
        for bi, q in enumerate(queries):
            known = [i for i in q if rows[i] >= 0][-3:]
            qv = vec[known].mean(axis=0) if known else np.zeros(5)
            if scoring == "cosine" and known:
                qv = qv / np.linalg.norm(qv)
            want = vec @ qv
            np.testing.assert_allclose(got[bi, rows >= 0], want[rows >= 0], rtol=1e-5, atol=1e-6)
    assert s.coverage == pytest.approx(6 / 8)


def test_embedding_scorer_rejects_unrelated_set():
    with pytest.raises(Exception, match="none of the 2 catalogue items"):
        EmbeddingScorer(_set()).fit(pl.DataFrame(), Vocab(["x", "y"]))


def test_user_embedding_scorer():
    items = _set(n=4, d=3)
    users = EmbeddingSet(["u1", "u2"], np.array([[1, 0, 0], [0, 2, 0]], np.float32), kind="users")
    cat = Vocab(["item0", "item1", "item2", "item3"])
    s = UserEmbeddingScorer(users, items).fit(pl.DataFrame(), cat)
    got = s.score_queries(_batch([[0], [1], []], user_ids=np.array(["u2", "nobody", "u1"], dtype=object)))
    np.testing.assert_allclose(got[0], 2 * items.vectors[:, 1], rtol=1e-6)
    np.testing.assert_allclose(got[1], 0)
    np.testing.assert_allclose(got[2], items.vectors[:, 0], rtol=1e-6)
    assert s.unknown_users == 1
