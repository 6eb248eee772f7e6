"""Batch candidate generation and candidate scoring (issue #5, items 3 and 5).

The run: a small synthetic dataset, an item EmbeddingSet of topic one-hot
vectors plus a little seeded noise (no ties), exported to Annoy. The last
item gets no vector and only two appended cold users click it, so they can
only get the popularity fallback. No repeat clicks (one event per user and item): P-ML's
harness never masks a test item that repeats a train item, while a batch
job with ``exclude_seen`` cannot know which item is the target; without
repeats both mask exactly the same items.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from recemb.config import build_config
from recemb.data import schema, splits, synth
from recemb.data.config import SynthConfig
from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet
from recemb.errors import ConfigError, DataValidationError
from recemb.eval.candidates_eval import evaluate_candidates, score_candidates, target_ranks
from recemb.eval.embedding_scorer import EmbeddingScorer
from recemb.eval.holdout_queries import holdout_queries, query_builder
from recemb.eval.protocols import run_protocol
from recemb.index.export import export_all
from recemb.retrieval.candidates import (
    CANDIDATES_SCHEMA,
    CandidatesConfig,
    generate_candidates,
    partition_of,
    read_candidates,
)
from recemb.testing import faults

K = 10
COLD = ["cold-a", "cold-b"]
# search_k far above the catalogue: Annoy visits every item, so the lists are exact.
EXACT = {"search_k": 100_000}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(cfg, item EmbeddingSet) of a prepared, embedded and exported run."""
    root = tmp_path_factory.mktemp("cand")
    cfg = build_config({"run": {"name": "r", "dir": str(root)}})
    synth.generate(
        SynthConfig(users=150, items=80, events=3000, topics=6, impressions=0, images=False, seed=3),
        cfg.prepared_dir,
    )
    items = pl.read_parquet(cfg.prepared_dir / "items.parquet").sort("item_id")
    # Only the cold users click the last item, so every other history and target has a vector.
    ev = schema.read_table(cfg.prepared_dir / "events.parquet", "events")
    ev = ev.filter(pl.col("item_id") != items["item_id"][-1])
    t = datetime(2024, 3, 1, tzinfo=UTC)
    extra = schema.coerce(
        pl.DataFrame({"user_id": COLD, "item_id": [items["item_id"][-1]] * 2, "ts": [t, t]}),
        "events",
        "<test>",
    )
    ev = pl.concat([ev, extra.select(ev.columns)])
    ev = ev.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    schema.write_table(ev, cfg.prepared_dir / "events.parquet", "events")
    # The last item gets no vector: the cold users' only item is unknown to the index.
    known = items.head(items.height - 1)
    rng = np.random.default_rng(0)
    onehot = np.eye(6, dtype=np.float32)[known["topic"].to_numpy()]
    vectors = np.hstack([onehot, 0.2 * rng.normal(size=(known.height, 3)).astype(np.float32)])
    emb = EmbeddingSet(known["item_id"].to_list(), vectors, kind="topics")
    emb.save(cfg.run_dir / "topics" / "embeddings")
    export_all({"topics": cfg.run_dir / "topics" / "embeddings"}, cfg.run_dir, n_trees=5, sample=20)
    return cfg, emb


def run_paths(cfg) -> tuple:
    """``(run_dir, events_path)`` of a config: the first two arguments of generate_candidates."""
    return cfg.run_dir, cfg.prepared_dir / "events.parquet"


def gen(cfg, out, **kw):
    kw = {"k": K, "partitions": 4, "num_workers": 0, "out": str(out), **kw}
    lines: list[str] = []
    c = CandidatesConfig(**kw)
    queries = query_builder(c.holdout, cfg.data.sessionize.gap_minutes)
    path = generate_candidates(*run_paths(cfg), c, queries=queries, log_fn=lines.append)
    return path, lines


def histories(cfg) -> dict[str, set[str]]:
    ev = schema.read_table(cfg.prepared_dir / "events.parquet", "events")
    return {u: set(items) for u, items in ev.group_by("user_id").agg("item_id").iter_rows()}


def test_every_user_gets_k_unseen_candidates_with_the_exact_schema(run, tmp_path):
    cfg, emb = run
    out, lines = gen(cfg, tmp_path / "c")
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-0000{i}.parquet" for i in range(4)]
    for p in parts:
        assert pq.read_schema(p).remove_metadata() == CANDIDATES_SCHEMA
    df = read_candidates(out)
    hist = histories(cfg)
    assert set(df["user_id"]) == set(hist)
    per_user = df.group_by("user_id").agg("rank", "item_id")
    for user, ranks, items in per_user.iter_rows():
        assert sorted(ranks) == list(range(1, K + 1)), user
        assert len(set(items)) == K, user
        assert not set(items) & hist[user], f"{user} got a seen item"
    cold = [u for u, items in hist.items() if not items & set(emb.ids)]
    assert sorted(cold) == COLD
    is_cold = pl.col("user_id").is_in(cold)
    assert df.filter(is_cold)["source"].unique().to_list() == ["popularity"]
    # Annoy may find fewer than k + margin (popularity then tops up), but never none.
    assert (df.filter(~is_cold & (pl.col("rank") == 1))["source"] == "topics").all()
    m = json.loads((out / "manifest.json").read_text())
    got = (m["users"], m["rows"], m["k"], m["sources"])
    assert got == (len(hist), len(hist) * K, K, ["topics"])
    assert (out / "_SUCCESS").is_file()
    assert any("4/4 partitions" in line for line in lines)


def test_partitions_are_fixed_by_a_hash_of_the_user_id(run, tmp_path):
    cfg, _ = run
    out, _ = gen(cfg, tmp_path / "c")
    for p in sorted(out.glob("part-*.parquet")):
        users = pl.read_parquet(p)["user_id"]
        part = int(p.stem.split("-")[1])
        assert set(partition_of(users.to_list(), 4)) <= {part}
        assert users.to_list() == sorted(users.to_list())  # sorted inside the part
    # crc32 of the utf-8 bytes: the same in every process and library version.
    want = [zlib.crc32(b"u001") % 7, zlib.crc32("用户".encode()) % 7]
    assert partition_of(["u001", "用户"], 7).tolist() == want


def test_crash_then_rerun_resumes_without_duplicates(run, tmp_path):
    cfg, _ = run
    whole, _ = gen(cfg, tmp_path / "whole")
    out = tmp_path / "crash"
    with faults.inject("candidates.part", tmp_path / "fault.marker", part=2):
        with pytest.raises(RuntimeError, match="injected fault at candidates.part .part=2"):
            generate_candidates(
                *run_paths(cfg),
                CandidatesConfig(k=K, partitions=4, num_workers=0, out=str(out)),
                log_fn=lambda _: None,
            )
    left = sorted(p.name for p in out.iterdir())
    assert left == ["_job.json", "part-00000.parquet", "part-00001.parquet"]
    first = (out / "part-00000.parquet").stat().st_mtime_ns
    _, lines = gen(cfg, out)
    assert any("resuming, 2/4" in line for line in lines)
    assert (out / "part-00000.parquet").stat().st_mtime_ns == first  # not rewritten
    got, want = read_candidates(out), read_candidates(whole)
    assert got.select("user_id", "rank").is_duplicated().sum() == 0
    assert got.equals(want)
    assert json.loads((out / "manifest.json").read_text())["resumed_partitions"] == 2


def test_rerun_is_a_no_op_and_changed_inputs_start_afresh(run, tmp_path):
    cfg, _ = run
    out, _ = gen(cfg, tmp_path / "c")
    before = (out / "part-00000.parquet").stat().st_mtime_ns
    _, lines = gen(cfg, out)
    assert any("nothing to do" in line for line in lines)
    assert (out / "part-00000.parquet").stat().st_mtime_ns == before
    _, lines = gen(cfg, out, k=3, num_workers=0)
    assert any("starting afresh" in line for line in lines)
    assert read_candidates(out).group_by("user_id").len()["len"].unique().to_list() == [3]


def test_a_killed_worker_leaves_no_temp_file_behind(run, tmp_path):
    cfg, _ = run
    out = tmp_path / "c"
    gen(cfg, out)
    (out / "part-00003.parquet").unlink()
    (out / "_SUCCESS").unlink()
    (out / ".part-00003.parquet.abc.tmp").write_bytes(b"half a file")  # as a kill -9 leaves it
    _, lines = gen(cfg, out)
    assert any("resuming, 3/4" in line for line in lines)
    assert not list(out.glob(".*.tmp"))


def test_bad_settings_are_named(run, tmp_path):
    cfg, _ = run
    with pytest.raises(ConfigError, match="no index for \\['nope'\\]"):
        gen(cfg, tmp_path / "c", sources=["nope"])
    with pytest.raises(ConfigError, match="quotas name unknown sources \\['other'\\]"):
        gen(cfg, tmp_path / "c", quotas={"other": 3})
    empty = build_config({"run": {"name": "empty", "dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="recemb export"):
        generate_candidates(*run_paths(empty), CandidatesConfig(num_workers=0))
    with pytest.raises(DataValidationError, match="no _SUCCESS"):
        read_candidates(tmp_path)


# ------------------------------------------------------------------ scoring
def test_score_candidates_on_a_hand_made_case():
    cands = pl.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", "b"],
            "rank": [1, 2, 3, 1, 2, 3],
            "item_id": ["x", "y", "z", "y", "x", "w"],
            "source": ["m", "m", "popularity", "m", "m", "m"],
        }
    )
    # a's target y at rank 2; b's target v absent; c has no candidates at all.
    targets = pl.DataFrame({"user_id": ["a", "b", "c"], "target": ["y", "v", "x"]})
    assert target_ranks(cands, targets).tolist() == [2.0, np.inf, np.inf]
    got = score_candidates(cands, targets, ks=[1, 2, 3, 20], k=3, catalogue=list("wxyzabcd"))
    assert got["recall@1"] == 0.0
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert got["ndcg@2"] == pytest.approx((1 / np.log2(3)) / 3)
    assert got["mrr@3"] == pytest.approx(0.5 / 3)
    assert "recall@20" not in got  # beyond the list length k = 3
    assert got["covered"] == pytest.approx(2 / 3)
    assert got["coverage"] == pytest.approx(4 / 8)  # x, y, z, w of 8 items
    assert got["fallback_share"] == pytest.approx(1 / 6)
    assert got["queries"] == 3


@pytest.mark.parametrize("holdout", ["ml", "sess"])
def test_candidate_recall_equals_the_protocol_runner(run, tmp_path, holdout):
    """Exact lists from the batch job = the harness's own ranking of the same vectors."""
    cfg, emb = run
    out, _ = gen(cfg, tmp_path / holdout, holdout=holdout, k=20, **EXACT)
    events = schema.read_table(cfg.prepared_dir / "events.parquet", "events")
    res = evaluate_candidates(out, events, [10, 20], cfg.data.sessionize.gap_minutes)
    assert res["holdout"] == holdout and res["protocol"] == holdout
    ev = schema.read_table(cfg.prepared_dir / "events.parquet", "events")
    # The cold users have one event each: never a P-ML test user nor a P-SESS test session.
    if holdout == "ml":
        split, cat = splits.leave_last_out(ev), Vocab.from_ids(emb.ids.tolist())
    else:
        from recemb.data.sessions import sessionize

        split = splits.session_split(sessionize(ev, cfg.data.sessionize.gap_minutes))
        cat = Vocab.from_ids(split.train["item_id"])
    scorer = EmbeddingScorer(emb, query="mean_last_n", last_n=5)
    want = run_protocol(holdout, split, scorer, cat, [10, 20])
    row = res["row"]
    assert row["queries"] == want["queries"]
    for key in ("recall@10", "recall@20", "ndcg@20", "mrr@20"):
        if key in want:
            assert row[key] == pytest.approx(want[key], abs=1e-12), key


def test_holdout_queries_hide_the_targets(run):
    cfg, _ = run
    ev = schema.read_table(cfg.prepared_dir / "events.parquet", "events")
    q, fit = holdout_queries(ev, "ml")
    split = splits.leave_last_out(ev)
    assert q.height == split.test.height
    row = q.row(0, named=True)
    val = split.validation.filter(pl.col("user_id") == row["user_id"])["item_id"].to_list()
    assert row["exclude"] == val and fit.height == split.train.height
    q, _ = holdout_queries(ev, "sess")
    assert all(len(h) >= 1 for h in q["history"])
    assert q["user_id"].str.contains("#").all()


def test_a_holdout_run_needs_its_query_builder(run, tmp_path):
    # Without queries=..., holdout ml would write production lists labelled "ml".
    cfg, _ = run
    with pytest.raises(ConfigError, match="needs its holdout queries"):
        generate_candidates(*run_paths(cfg), CandidatesConfig(holdout="ml", num_workers=0, out=str(tmp_path)))


# -------------------------------------------------------------------- Ray
def test_ray_data_job_matches_in_process_and_resumes(run, tmp_path, ray_local):
    cfg, _ = run
    local, _ = gen(cfg, tmp_path / "local")
    out = tmp_path / "ray"
    # The rule reaches the Ray Data actors through their runtime_env (Ray was started before it was set).
    with faults.inject("candidates.part", tmp_path / "fault.marker", part=1):
        with pytest.raises(Exception, match="injected fault at candidates.part .part=1"):
            generate_candidates(
                *run_paths(cfg),
                CandidatesConfig(k=K, partitions=4, num_workers=1, out=str(out)),
                log_fn=lambda _: None,
            )
    assert not (out / "_SUCCESS").exists() and not (out / "part-00001.parquet").exists()
    # Ray may run the blocks in any order: which parts made it before the failure varies.
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    gen(cfg, out, num_workers=1, cpus_per_worker=0.25)
    assert json.loads((out / "manifest.json").read_text())["resumed_partitions"] == len(written)
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written
    got = read_candidates(out)
    assert got.select("user_id", "rank").is_duplicated().sum() == 0
    assert got.equals(read_candidates(local))


@pytest.mark.slow
def test_two_ray_workers_write_the_same_parts(run, tmp_path, ray_local):
    cfg, _ = run
    local, _ = gen(cfg, tmp_path / "local", partitions=6)
    two, _ = gen(cfg, tmp_path / "two", partitions=6, num_workers=2, cpus_per_worker=0.5)
    for p in sorted(local.glob("part-*.parquet")):
        assert pl.read_parquet(two / p.name).equals(pl.read_parquet(p)), p.name
    assert not [f for f in os.listdir(two) if f.endswith(".tmp")]


def test_a_user_tower_encodes_every_history_for_its_index(tmp_path):
    """candidates.user_tower: the batch job queries the sequence index with the tower's vectors,
    exactly as the service's Retriever does with the same tower (serve.user_tower)."""
    import sys
    from datetime import timedelta

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from recemb.retrieval.candidates import history_lists, popularity
    from recemb.retrieval.retriever import Retriever
    from recemb.retrieval.sources import load_source
    from recemb.retrieval.towers import load_user_tower
    from serving.testing import make_demo_run

    run_dir = make_demo_run(tmp_path / "run", n_items=60, dim=8, model="sequence", tower=True)
    rng = np.random.default_rng(0)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    ev = schema.coerce(
        pl.DataFrame(
            {
                "user_id": [f"u{i % 20}" for i in range(200)],
                "item_id": [f"i{x}" for x in rng.integers(0, 60, 200)],
                "ts": [t0 + timedelta(minutes=i) for i in range(200)],
            }
        ),
        "events",
        "<test>",
    )
    events_path = tmp_path / "events.parquet"
    schema.write_table(ev, events_path, "events")
    c = CandidatesConfig(
        k=5, partitions=2, num_workers=0, out=str(tmp_path / "c"), sources=["sequence"], user_tower="sequence"
    )
    df = read_candidates(generate_candidates(run_dir, events_path, c))
    tower = load_user_tower(run_dir, None, "sequence")
    src, _ = load_source(run_dir / "index" / "sequence")
    hist = history_lists(ev)
    exclude_seen = json.loads((tmp_path / "c" / "manifest.json").read_text())["exclude_seen"]
    r = Retriever({"sequence": src}, popularity=popularity(ev), exclude_seen=exclude_seen)
    for u, h in hist.iter_rows():
        want = r.recommend(h, 5, query_vectors={"sequence": tower.encode([h], [u])[0]})
        assert df.filter(pl.col("user_id") == u).sort("rank")["item_id"].to_list() == [w[0] for w in want]
    # The tower is really used: pooled item vectors give other lists.
    pooled = r.recommend_batch(hist["history"].to_list(), 5, user_ids=hist["user_id"].to_list())
    assert pooled["item_id"].to_list() != df.sort("user_id", "rank")["item_id"].to_list()
    with pytest.raises(ConfigError, match="not among the sources"):
        generate_candidates(run_dir, events_path, c.model_copy(update={"user_tower": "two_tower"}))
    shutil.copytree(run_dir / "index" / "sequence", run_dir / "index" / "two_tower")  # an index, no tower
    with pytest.raises(ConfigError, match="no saved tower"):
        generate_candidates(run_dir, events_path, c.model_copy(update={"user_tower": "two_tower", "sources": []}))
