"""Item2vec core: corpus building, the numba and torch SGNS kernels, the model API.

Planted structure: items fall into disjoint groups and a session only holds
items of one group, so a correct SGNS puts an item's nearest neighbours in
its own group; chance is (group size - 1) / (items - 1).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import make_events

from recemb.errors import ConfigError, DataValidationError
from recemb.models.item2vec.config import Item2VecConfig
from recemb.models.item2vec.corpus import build_corpus, keep_probabilities, negative_table
from recemb.models.item2vec.model import Item2Vec

GROUPS, PER_GROUP = 8, 15


def planted_sessions(n_sessions: int = 1500, seed: int = 0) -> list[list[str]]:
    """Sessions of 2..9 items drawn from one of GROUPS disjoint groups."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, GROUPS, n_sessions)
    lengths = rng.integers(2, 10, n_sessions)
    return [[f"g{g}_{i}" for i in rng.integers(0, PER_GROUP, n)] for g, n in zip(groups, lengths)]


def same_group_rate(model: Item2Vec, k: int = 5) -> float:
    hits = 0
    for item in model.vocab.ids:
        ids, _ = model.similar(item, k)
        hits += sum(i.split("_")[0] == item.split("_")[0] for i in ids)
    return hits / (k * len(model.vocab))


CHANCE = (PER_GROUP - 1) / (GROUPS * PER_GROUP - 1)  # ~0.12
FAST = dict(dim=16, epochs=5, threads=1, seed=0)


@pytest.fixture(scope="module")
def sessions() -> list[list[str]]:
    return planted_sessions()


# ------------------------------------------------------------------ corpus
def test_corpus_csr_orders_sessions_by_time_and_skips_short_ones():
    events = make_events(
        [
            ("u1", "a", 10, "s2"),
            ("u1", "b", 11, "s2"),
            ("u2", "c", 5, "s1"),
            ("u2", "a", 3, "s1"),
            ("u2", "b", 4, "s1"),
            ("u3", "z", 1, "s0"),  # a session of one event: no pair, skipped
        ],
        session=True,
    )
    corpus = build_corpus(events)
    ids = corpus.vocab.ids
    sessions = [ids[corpus.indices[a:b]].tolist() for a, b in zip(corpus.indptr[:-1], corpus.indptr[1:])]
    # s1 starts first (ts 3); inside it, events by time.
    assert sessions == [["a", "b", "c"], ["a", "b"]]
    assert corpus.indices.dtype == np.int32 and corpus.indptr.dtype == np.int64
    assert "z" not in corpus.vocab
    assert corpus.dropped == {"items_below_min_count": 0, "items_only_in_short_sessions": 1, "events": 1, "sessions": 1}


def test_corpus_sessionizes_events_without_session_id():
    # Same user, a 2-hour pause: two sessions (30-minute gap).
    events = make_events([("u", "a", 0), ("u", "b", 60), ("u", "c", 7200), ("u", "d", 7260)])
    corpus = build_corpus(events)
    assert corpus.n_sessions == 2 and corpus.n_events == 4


def test_keep_probabilities_match_word2vec_formula():
    counts = np.array([1000, 10, 1])
    keep = keep_probabilities(counts, sample=1e-2)
    t = 1e-2 * 1011  # threshold count 10.11
    assert keep[0] == pytest.approx((np.sqrt(1000 / t) + 1) * t / 1000, rel=1e-6)  # ~0.11
    assert keep[1] == 1.0 and keep[2] == 1.0  # rarer than the threshold: always kept
    assert (keep_probabilities(counts, 0) == 1).all()


@pytest.mark.parametrize("exponent", [0.75, 0.0, -0.5])
def test_negative_table_follows_count_power(exponent):
    counts = np.array([100, 10, 1])
    table = negative_table(counts, exponent, size=100_000)
    share = np.bincount(table, minlength=3) / len(table)
    want = counts**exponent / (counts**exponent).sum()
    np.testing.assert_allclose(share, want, atol=1e-4)
    if exponent < 0:
        assert share[2] > share[1] > share[0]  # rare items drawn most


# ------------------------------------------------------------------ quality
@pytest.mark.parametrize(
    "overrides",
    [
        {},  # skip-gram, window 5
        # CBOW with word2vec.c's CBOW learning rate: at 0.025 it is still near
        # its flat start after 5 epochs of this tiny corpus (gensim too).
        {"mode": "cbow", "alpha": 0.05},
        {"window": 0},  # whole-session context
        {"ns_exponent": -0.5},
        {"shared_negatives": True},
    ],
    ids=["skipgram", "cbow", "whole-session", "negative-ns-exponent", "shared-negatives"],
)
def test_neighbours_share_the_planted_group(sessions, overrides):
    model = Item2Vec(Item2VecConfig(**FAST, **overrides)).fit(sessions)
    rate = same_group_rate(model)
    assert rate > 0.8, f"same-group rate {rate:.2f} (chance {CHANCE:.2f})"


def test_loss_decreases_over_epochs(sessions):
    model = Item2Vec(Item2VecConfig(**FAST | {"epochs": 6})).fit(sessions)
    losses = [h["loss"] for h in model.history]
    assert losses[-1] < 0.8 * losses[0]
    assert all(b <= a * 1.02 for a, b in zip(losses, losses[1:])), losses


def test_progress_lines_and_one_summary(sessions, caplog, monkeypatch):
    # In a log (no terminal) progress is a line every RECEMB_PROGRESS_INTERVAL seconds: 0 = every epoch.
    monkeypatch.setenv("RECEMB_PROGRESS", "lines")
    monkeypatch.setenv("RECEMB_PROGRESS_INTERVAL", "0")
    with caplog.at_level(logging.INFO, logger="recemb.progress"):
        Item2Vec(Item2VecConfig(**FAST | {"epochs": 3})).fit(sessions)
    lines = [r.getMessage() for r in caplog.records if r.name == "recemb.progress"]
    assert len(lines) == 4, lines
    assert all("epoch" in m and "loss" in m and "ETA" in m for m in lines[:3])
    assert lines[0].startswith("item2vec numba: 1/3 epoch (33%)")
    assert "done: 3 epoch in" in lines[3] and "loss" in lines[3]


def test_one_thread_and_a_seed_are_deterministic(sessions):
    a = Item2Vec(Item2VecConfig(**FAST)).fit(sessions).vectors
    b = Item2Vec(Item2VecConfig(**FAST)).fit(sessions).vectors
    c = Item2Vec(Item2VecConfig(**FAST | {"seed": 1})).fit(sessions).vectors
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_torch_backend_matches_numba_quality_on_cpu(sessions):
    pytest.importorskip("torch")
    cfg = Item2VecConfig(**FAST | {"backend": "torch", "device": "cpu", "batch_size": 2048})
    torch_model = Item2Vec(cfg).fit(sessions)
    numba_model = Item2Vec(Item2VecConfig(**FAST)).fit(sessions)
    assert torch_model.backend == "torch" and numba_model.backend == "numba"
    t, n = same_group_rate(torch_model), same_group_rate(numba_model)
    assert t > 0.8 and abs(t - n) < 0.1, (t, n)
    assert torch_model.history[-1]["loss"] < torch_model.history[0]["loss"]


@pytest.mark.parametrize("overrides", [{"mode": "cbow", "alpha": 0.05}, {"window": 0}], ids=["cbow", "whole-session"])
def test_torch_backend_variants_learn_groups(sessions, overrides):
    pytest.importorskip("torch")
    cfg = Item2VecConfig(**FAST | {"backend": "torch", "device": "cpu", "batch_size": 2048} | overrides)
    assert same_group_rate(Item2Vec(cfg).fit(sessions)) > 0.8


@pytest.mark.gpu
def test_torch_backend_on_cuda(sessions):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    model = Item2Vec(Item2VecConfig(**FAST | {"backend": "auto", "device": "auto"})).fit(sessions)
    assert model.backend == "torch"
    assert same_group_rate(model) > 0.8


# ------------------------------------------------------- edge cases, errors
def test_empty_and_single_item_sessions_are_skipped_and_counted(sessions):
    model = Item2Vec(Item2VecConfig(**FAST)).fit(sessions + [[], ["solo"], []])
    assert "solo" not in model.vocab
    assert model.dropped["sessions"] == 3
    with pytest.raises(KeyError, match="only occurs in sessions with fewer than 2 events"):
        model.similar("solo")
    with pytest.raises(KeyError, match="never occurs"):
        model.similar("no-such-item")


def test_min_count_excludes_rare_items_and_says_so(sessions, caplog):
    rare = [["rare", "g0_1"], ["g0_2", "g0_3"]]
    with caplog.at_level(logging.INFO, logger="recemb.item2vec"):
        model = Item2Vec(Item2VecConfig(**FAST | {"min_count": 2})).fit(sessions + rare)
    assert "rare" not in model.item_embeddings().ids.tolist()
    assert model.dropped["items_below_min_count"] == 1
    assert any("below" in r.getMessage() or "< min_count" in r.getMessage() for r in caplog.records)
    with pytest.raises(KeyError, match="seen 1 times, below min_count=2"):
        model.similar("rare")


def test_no_trainable_session_is_a_clear_error():
    with pytest.raises(DataValidationError, match="no session has 2 or more events"):
        Item2Vec(Item2VecConfig(**FAST)).fit([["a"], ["b"], []])
    with pytest.raises(DataValidationError, match="lists of string item ids"):
        Item2Vec(Item2VecConfig(**FAST)).fit([[1, 2], [3]])
    with pytest.raises(DataValidationError, match="empty"):
        Item2Vec(Item2VecConfig(**FAST)).fit([])


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="extra"):
        Item2VecConfig(windw=3)
    with pytest.raises(ConfigError, match="item2vec.epochs"):
        Item2Vec(epochs=0)
    with pytest.raises(ValueError, match="device"):
        Item2VecConfig(device="gpu")


# ------------------------------------------------------------------ output
def test_embeddings_are_an_item2vec_embedding_set(sessions, tmp_path):
    model = Item2Vec(Item2VecConfig(**FAST)).fit(sessions)
    emb = model.item_embeddings()
    assert emb.kind == "item2vec" and emb.metric == "cosine" and emb.dim == 16
    assert emb.config["window"] == 5 and len(emb.metrics["loss_per_epoch"]) == 5
    from recemb.embeddings import EmbeddingSet

    loaded = EmbeddingSet.load(emb.save(tmp_path / "embeddings"))
    np.testing.assert_array_equal(np.asarray(loaded.vectors), model.vectors)
    ids, scores = model.similar(model.vocab.ids[0], k=4)
    assert len(ids) == 4 and model.vocab.ids[0] not in ids and (np.diff(scores) <= 0).all()


def test_word2vec_export_loads_in_gensim(sessions, tmp_path):
    gensim_models = pytest.importorskip("gensim.models")
    model = Item2Vec(Item2VecConfig(**FAST)).fit(sessions)
    path = model.save_word2vec_format(tmp_path / "items.w2v")
    kv = gensim_models.KeyedVectors.load_word2vec_format(str(path))
    assert kv.index_to_key == model.vocab.ids.tolist()
    np.testing.assert_allclose(kv.vectors, model.vectors, rtol=1e-6)


def test_word2vec_export_rejects_ids_with_spaces(tmp_path):
    model = Item2Vec(Item2VecConfig(**FAST)).fit([["a b", "c"], ["c", "a b"]])
    with pytest.raises(ValueError, match="whitespace"):
        model.save_word2vec_format(tmp_path / "x.w2v")


# --------------------------------------------------------------- real data
def test_yoochoose_beats_popularity_clearly(shared_data):
    """P-SESS on Yoochoose-100k (last-item query): popularity scores 0.0894 Recall@20 (DESIGN.md §7)."""
    from recemb.data.sources.yoochoose import read_yoochoose
    from recemb.data.splits import session_split
    from recemb.data.vocab import Vocab
    from recemb.eval.embedding_scorer import EmbeddingScorer
    from recemb.eval.protocols import run_protocol

    folder = shared_data / "yoochoose-100k"
    if not folder.exists():
        pytest.skip(f"{folder} not found")
    dataset, _ = read_yoochoose(folder)
    split = session_split(dataset.events)
    model = Item2Vec(Item2VecConfig(epochs=5, threads=1, seed=0)).fit(split.train)
    catalogue = Vocab.from_ids(split.train["item_id"])
    out = run_protocol("sess", split, EmbeddingScorer(model.item_embeddings(), query="last"), catalogue, ks=(20,))
    assert out["recall@20"] > 0.4, out  # gensim item2vec with defaults: 0.571
