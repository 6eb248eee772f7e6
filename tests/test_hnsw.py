"""The HNSW backend (issue 16, item 5): search, certified export, safe loading, live add/remove,
exclusion inside the search, and the Retriever over it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recemb.embeddings import EmbeddingSet
from recemb.index.annoy_index import AnnoyIndex
from recemb.index.base import RecembIndexError
from recemb.index.exact import ExactIndex
from recemb.index.export import HeldOutRecall
from recemb.index.hnsw_export import INDEX_FILE, MANIFEST_FILE, export_hnsw, load_hnsw_index
from recemb.index.hnsw_index import HnswIndex
from recemb.retrieval.retriever import Retriever
from recemb.retrieval.sources import EmbeddingSource, load_source
from tests.child_loads import load_in_child
from tests.test_index import clustered

N, D = 3000, 16


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(N, D, seed=3)


@pytest.fixture(scope="module")
def embset_dir(tmp_path_factory, vectors) -> Path:
    d = tmp_path_factory.mktemp("emb") / "item2vec" / "embeddings"
    EmbeddingSet([f"item{i}" for i in range(N)], vectors, kind="item2vec", metric="cosine").save(d)
    return d


@pytest.fixture(scope="module")
def exported(embset_dir) -> tuple[Path, dict]:
    out = embset_dir.parent.parent / "index" / "item2vec"
    return out, export_hnsw(embset_dir, out, m=8, ef_construction=64, threads=1)


# ------------------------------------------------------------------- the index
@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_a_search_as_wide_as_the_catalogue_is_exact_with_exact_scores(vectors, metric):
    """ef = N walks the whole graph: the exact top-k (as Annoy with a huge search_k)."""
    index = HnswIndex(metric, m=12, ef_construction=100, ef_factor=N / 10, threads=2).build(vectors)
    exact = ExactIndex(metric).build(vectors)
    q = clustered(200, D, seed=9)
    rows, scores = index.search(q, 10)
    truth, _ = exact.search(q, 10)
    assert recall_at(rows, truth) >= 0.99
    # Every returned score is that row's exact score (the ranking may differ, the scores may not).
    full = ExactIndex(metric).build(vectors).search(q, N)
    exact_score = {(b, r): s for b in range(len(q)) for r, s in zip(full[0][b], full[1][b])}
    got = np.array([exact_score[(b, r)] for b in range(len(q)) for r in rows[b]])
    np.testing.assert_allclose(scores.ravel(), got, rtol=1e-4, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_exclusion_inside_the_search_keeps_k_and_skips_the_rows(vectors):
    index = HnswIndex("cosine", m=12, ef_construction=100, ef_factor=16).build(vectors)
    q = clustered(50, D, seed=5)
    top, _ = index.search(q, 30)
    skip = [t[:20] for t in top]  # each query's own 20 best
    rows, _ = index.search(q, 10, exclude=skip)
    assert (rows >= 0).all()
    assert not any(set(r) & set(s) for r, s in zip(rows, skip))
    # ... and what it returns instead are the next best: exact search filtered afterwards.
    assert recall_at(rows, top[:, 20:30]) >= 0.9
    with pytest.raises(RecembIndexError, match="one per query"):
        index.search(q, 10, exclude=skip[:3])
    with pytest.raises(RecembIndexError, match="cannot exclude"):
        ExactIndex().build(vectors).search(q, 10, exclude=skip)


def test_add_and_remove_rows_while_searching(vectors):
    index = HnswIndex("cosine", m=8, ef_construction=64).build(vectors[:1000])
    new = clustered(5, D, seed=11) * 3
    rows = index.add(new)
    assert rows.tolist() == list(range(1000, 1005)) and index.count == 1005
    found, scores = index.search(new, 1)
    assert found[:, 0].tolist() == rows.tolist() and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    index.add(clustered(2000, D, seed=12))  # grows past its capacity (resize) and keeps answering
    assert index.count == 3005 and index.search(new, 1)[0][:, 0].tolist() == rows.tolist()
    index.remove(rows[:2])
    found, _ = index.search(new, 5)
    assert not set(found.ravel()) & set(rows[:2].tolist()) and index.deleted == {1000, 1001}
    with pytest.raises(RecembIndexError, match="NaN"):
        index.add(np.full((1, D), np.nan, dtype=np.float32))
    with pytest.raises(RecembIndexError, match="dimension"):
        index.add(np.ones((1, D + 1), dtype=np.float32))
    with pytest.raises(RecembIndexError, match="not in this index"):
        index.remove([10_000])
    small = HnswIndex("cosine").build(vectors[:3])
    small.remove([0, 1, 2])
    rows, scores = small.search(vectors[:1], 2)
    assert (rows == -1).all() and np.isneginf(scores).all()  # nothing left: padded, no crash


# -------------------------------------------------------------- export / load
def test_export_certifies_ef_and_every_load_uses_it(exported, embset_dir, vectors):
    out, m = exported
    assert m["kind"] == "hnsw" and m["count"] == N and m["dim"] == D and m["m"] == 8
    c = m["certified"]
    assert c["met"] and c["recall"] >= 0.95 and m["ef_factor"] == c["ef_factor"]
    assert [r["ef_factor"] for r in c["sweep"]] == [1, 2, 4, 8, 16, 32, 64][: len(c["sweep"])]
    assert c["ef"] == max(10, int(np.ceil(c["ef_factor"] * 10)))
    on_disk = json.loads((out / MANIFEST_FILE).read_text())
    assert on_disk["sha256"] == m["sha256"]
    index = load_hnsw_index(out)
    assert isinstance(index, HnswIndex) and index.ef_factor == m["ef_factor"] and index.count == N
    # The loaded graph searched at the recorded breadth is the one certified: same held-out recall.
    assert HeldOutRecall(vectors, "cosine", seed=0)(index)[0] == c["recall"]
    source, manifest = load_source(out)
    assert isinstance(source, EmbeddingSource) and manifest["kind"] == "hnsw"


def test_export_that_cannot_meet_the_target_is_refused_unless_accepted(embset_dir, tmp_path):
    out = tmp_path / "idx"
    with pytest.raises(RecembIndexError, match="recall_target"):
        export_hnsw(embset_dir, out, m=2, ef_construction=1, recall_target=0.99999)
    assert not out.exists()
    m = export_hnsw(embset_dir, out, m=2, ef_construction=1, recall_target=0.99999, accept_lower_recall=True)
    assert not m["certified"]["met"] and out.is_dir()


def _edit_manifest(d: Path, **changes) -> None:
    m = json.loads((d / MANIFEST_FILE).read_text())
    m.update(changes)
    (d / MANIFEST_FILE).write_text(json.dumps(m))


def _foreign_graph(d: Path, dim: int, m: int) -> None:
    """A valid hnswlib file of another shape, with the manifest's byte count so only the header can tell."""
    h = HnswIndex("cosine", m=m, ef_construction=16).build(clustered(N, dim, seed=1))
    h.save(d / INDEX_FILE)
    _edit_manifest(d, file_bytes=(d / INDEX_FILE).stat().st_size)


def _flip(d: Path, offset: int) -> None:
    data = bytearray((d / INDEX_FILE).read_bytes())
    data[offset] ^= 0xFF
    (d / INDEX_FILE).write_bytes(bytes(data))


CASES = {
    "truncated": (lambda d: (d / INDEX_FILE).write_bytes((d / INDEX_FILE).read_bytes()[:-100]), "truncated"),
    "empty": (lambda d: (d / INDEX_FILE).write_bytes(b""), "truncated|shorter"),
    "missing": (lambda d: (d / INDEX_FILE).unlink(), "missing"),
    "other_dim": (lambda d: _foreign_graph(d, D * 2, 8), "another dimension|header"),
    "other_m": (lambda d: _foreign_graph(d, D, 12), "another dimension or degree|header"),
    "annoy_file": (lambda d: _annoy_in_place(d), "header|truncated"),
    "manifest_dim": (lambda d: _edit_manifest(d, dim=D + 1), "header|different runs"),
    "manifest_kind": (lambda d: _edit_manifest(d, kind="annoy"), "not 'hnsw'"),
    "bad_label": (lambda d: _flip(d, 96 + (2 * 8 * 4 + 4) + 4 * D + 7), "outside the index|sha256|corrupt"),
    "bad_entry": (lambda d: _flip(d, 55), "out of range|sha256|corrupt"),  # entry point: bytes 52-55
}


def _annoy_in_place(d: Path) -> None:
    a = AnnoyIndex("cosine", n_trees=5).build(clustered(N, D, seed=2))
    a.save(d / INDEX_FILE)
    _edit_manifest(d, file_bytes=(d / INDEX_FILE).stat().st_size)


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_hnsw_artifact_is_refused_with_a_clear_error(exported, tmp_path, case, verify):
    d = tmp_path / "idx"
    shutil.copytree(exported[0], d)
    damage, match = CASES[case]
    damage(d)
    with pytest.raises(RecembIndexError, match=match) as e:
        load_hnsw_index(d, verify=verify, embeddings=exported[0].parent.parent / "item2vec" / "embeddings")
    assert "recemb export" in str(e.value)


def test_damaged_hnsw_files_never_crash_the_process(exported, tmp_path):
    """hnswlib trusts the caller's dimension; run unverified loads of every damage in a child process
    to prove they raise instead of reading out of bounds."""
    dirs = {}
    for case, (damage, _) in CASES.items():
        d = tmp_path / case
        shutil.copytree(exported[0], d)
        damage(d)
        dirs[case] = str(d)
    emb = str(exported[0].parent.parent / "item2vec" / "embeddings")
    result = load_in_child("recemb.index.hnsw_export:load_hnsw_index", dirs, embeddings=emb)
    assert result == {case: "error" for case in CASES}


# ------------------------------------------------------------- the Retriever
@pytest.fixture
def retriever(exported) -> Retriever:
    source, _ = load_source(exported[0])
    return Retriever({"item2vec": source}, popularity=[f"item{i}" for i in range(20)], exclude_seen=True)


def test_a_cold_item_added_live_is_recommended_at_once(retriever, vectors):
    history = ["item5", "item6"]
    assert "cold-1" not in [h[0] for h in retriever.recommend(history, 10)]
    query = vectors[[5, 6]] / np.linalg.norm(vectors[[5, 6]], axis=1, keepdims=True)
    retriever.add_items("item2vec", ["cold-1"], query.mean(0, keepdims=True))  # what this history asks for
    hits = retriever.recommend(history, 10)
    assert hits[0][0] == "cold-1" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert retriever.known_item("cold-1") and retriever.similar_items("cold-1", 3)[0][0] != "cold-1"
    assert retriever.recommend(["cold-1"], 5)[0][0] != "cold-1"  # seen: excluded, through the new row
    # a new vector for a known item replaces its row: the old one is never returned again
    retriever.add_items("item2vec", ["item7"], -query.mean(0, keepdims=True))
    assert "item7" not in [h[0] for h in retriever.recommend(history, 50)]
    with pytest.raises(Exception, match="shape"):
        retriever.add_items("item2vec", ["x"], np.ones((1, D + 1), dtype=np.float32))
    with pytest.raises(Exception, match="not an embedding source"):
        retriever.add_items("nope", ["x"], np.ones((1, D), dtype=np.float32))


def test_removed_items_are_never_returned_by_any_source_or_the_fallback(retriever):
    top = [h[0] for h in retriever.recommend(["item5", "item6"], 10)]
    retriever.remove_items(top[:3] + ["item0", "never-seen"])
    after = [h[0] for h in retriever.recommend(["item5", "item6"], 10)]
    assert len(after) == 10 and not set(after) & set(top[:3])
    fallback = retriever.answer(["unknown"], 10)
    assert fallback.fallback and "item0" not in [h[0] for h in fallback.hits]
    assert not retriever.known_item(top[0])


def test_batch_and_single_answers_agree_with_exclusion_inside_the_search(retriever):
    rng = np.random.default_rng(0)
    histories = [[f"item{i}" for i in rng.integers(0, N, rng.integers(0, 30))] for _ in range(40)]
    excludes = [[f"item{i}" for i in rng.integers(0, N, rng.integers(0, 5))] for _ in range(40)]
    batch = retriever.answers(histories, 10, excludes, ["item1"], None, None, None, True)
    for h, x, b in zip(histories, excludes, batch):
        one = retriever.answer(h, 10, exclude=x, blocked=["item1"])
        assert one.hits == b.hits
        assert not {i for i, _, _ in one.hits} & (set(h) | set(x) | {"item1"})
