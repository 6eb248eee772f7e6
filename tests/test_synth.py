"""The synthetic generator: exact schema, determinism, configured sizes, content and learnability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from recemb.data import schema
from recemb.data.config import SynthConfig
from recemb.data.dataset import load_dataset
from recemb.data.synth import generate
from recemb.errors import ConfigError
from recemb.io import sha256_file

# Small but not tiny: several event chunks, all topics populated, quick to build (~1 s).
CFG = SynthConfig(
    users=400,
    items=240,
    events=30_500,
    topics=8,
    impressions=1_500,
    impression_size=10,
    image_size=24,
    chunk_events=8_000,
    seed=7,
)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return generate(CFG, tmp_path_factory.mktemp("synth") / "ds")


@pytest.fixture(scope="module")
def ds(synth_dir):
    return load_dataset(synth_dir)


def test_tables_load_with_exact_canonical_dtypes(ds, synth_dir):
    for name, table in (
        ("events", schema.EVENTS),
        ("items", schema.ITEMS),
        ("users", schema.USERS),
        ("impressions", schema.IMPRESSIONS),
    ):
        df = getattr(ds, name)
        assert df is not None, name
        for col in table.columns:
            assert df.schema[col.name] == col.dtype, (name, col.name)
    assert ds.items.schema["topic"] == pl.Int32
    assert ds.users.schema["home_topic"] == pl.Int32
    assert ds.events.columns == schema.EVENTS.names  # no extra event columns
    # Streamed in chunks: one row group per chunk of chunk_events.
    assert pq.ParquetFile(synth_dir / "events.parquet").num_row_groups == 4


def test_dataset_json_matches_the_tables(ds, synth_dir):
    meta = json.loads((synth_dir / "dataset.json").read_text())
    assert meta["name"] == "synth"
    assert meta["counts"] == ds.counts()
    assert meta["config"] == CFG.model_dump(mode="json")
    assert set(meta["sha256"]) == {
        "events.parquet",
        "items.parquet",
        "users.parquet",
        "impressions.parquet",
    }
    for name, digest in meta["sha256"].items():
        assert sha256_file(synth_dir / name) == digest
    assert len(meta["ground_truth"]["topic_names"]) == CFG.topics


def test_counts_follow_the_config(ds):
    c = ds.counts()
    assert c["events"] == CFG.events  # the last session is trimmed so the total is exact
    assert c["users"] == CFG.users  # every user gets a session when sessions >= users
    assert c["items"] == CFG.items
    expected_sessions = CFG.events / CFG.mean_session_length
    assert abs(c["sessions"] - expected_sessions) < 0.05 * expected_sessions
    assert c["impressions"] == CFG.impressions
    assert c["impression_rows"] == CFG.impressions * CFG.impression_size
    # Impressions come after the events' period, and events lie within it.
    start = pl.Series([CFG.start]).str.to_datetime(time_unit="us", time_zone="UTC")[0]
    assert ds.events["ts"].min() >= start
    assert ds.impressions["ts"].min() >= ds.events["ts"].max()
    assert set(ds.events["event"].unique()) == {"click", "purchase"}


def test_sessions_stay_on_topic_and_repeat_sometimes(ds):
    ev = ds.events.join(ds.items.select("item_id", "topic"), on="item_id")
    pairs = ev.with_columns(
        prev_topic=pl.col("topic").shift(1).over("session_id", order_by="ts"),
        prev_item=pl.col("item_id").shift(1).over("session_id", order_by="ts"),
    ).drop_nulls("prev_topic")
    same_topic = (pairs["topic"] == pairs["prev_topic"]).mean()
    # topic_drift=0.15 (and repeats, which go to an earlier, usually same-topic item).
    assert same_topic > 1 - CFG.topic_drift - 0.02
    assert same_topic < 0.99  # drift does happen
    dup_in_session = ev.group_by("session_id").agg(pl.col("item_id").is_duplicated().any())["item_id"].mean()
    assert dup_in_session > 0.05


def test_same_seed_gives_identical_files_and_other_seed_differs(synth_dir, tmp_path):
    again = generate(CFG, tmp_path / "again")
    a = json.loads((synth_dir / "dataset.json").read_text())["sha256"]
    b = json.loads((again / "dataset.json").read_text())["sha256"]
    assert a == b
    for name in ("i000.png", "i123.png"):
        assert (synth_dir / "images" / name).read_bytes() == (again / "images" / name).read_bytes()
    other = generate(CFG.model_copy(update={"seed": 8, "images": False}), tmp_path / "other")
    ev_a = pl.read_parquet(synth_dir / "events.parquet")
    ev_b = pl.read_parquet(other / "events.parquet")
    assert not ev_a.equals(ev_b)


def test_images_off_leaves_events_unchanged_and_paths_null(synth_dir, tmp_path):
    out = generate(CFG.model_copy(update={"images": False, "impressions": 0}), tmp_path / "noimg")
    assert not (out / "images").exists()
    assert not (out / "impressions.parquet").exists()
    assert sha256_file(out / "events.parquet") == sha256_file(synth_dir / "events.parquet")
    assert load_dataset(out).items["image_path"].null_count() == CFG.items


def test_chinese_share_and_topic_words(ds):
    items = ds.items
    han = items["title"].str.contains(r"[\u4e00-\u9fff]") & items["text"].str.contains(r"[\u4e00-\u9fff]")
    assert int(han.sum()) == round(CFG.chinese_fraction * CFG.items)
    assert (items.filter(han)["language"] == "zh").all()
    english = items.filter(~han)
    assert english["text"].str.contains(r"^[A-Za-z ]+$").all()
    # Words carry the topic: the most common non-filler word of a topic's texts
    # occurs in no more than a few texts of other topics.
    words = english.select("topic", pl.col("text").str.split(" ").alias("w")).explode("w")
    top = (
        words.group_by("topic", "w")
        .len()
        .sort(["topic", "len", "w"], descending=[False, True, False])
        .filter(~pl.col("w").is_in(["the", "a", "an", "of", "and", "with", "for", "in", "on", "to"]))
        .group_by("topic")
        .first()
    )
    for topic, word in top.select("topic", "w").iter_rows():
        assert words.filter((pl.col("w") == word) & (pl.col("topic") != topic)).height == 0, (
            topic,
            word,
        )
    assert items["category"].list.len().eq(2).all()
    assert items.group_by("topic").agg(pl.col("category").list.first().n_unique())["category"].eq(1).all()


def test_images_decode_and_their_colour_tells_the_topic(ds, synth_dir):
    items = ds.items.sort("item_id")
    feats = []
    for rel in items["image_path"]:
        with Image.open(synth_dir / rel) as im:
            assert im.size == (CFG.image_size, CFG.image_size) and im.mode == "RGB"
            px = np.asarray(im, dtype=np.float64).reshape(-1, 3)
        # Foreground = saturated pixels (the background is a light grey gradient).
        fg = px[px.max(axis=1) - px.min(axis=1) > 60]
        assert len(fg) > 0.05 * len(px)
        feats.append(fg.mean(axis=0))
    x, y = np.array(feats), items["topic"].to_numpy()
    # Nearest centroid on foreground RGB, centroids from even rows, tested on odd rows.
    train, test = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    centroids = np.stack([x[train & (y == t)].mean(axis=0) for t in range(CFG.topics)])
    pred = np.argmin(((x[test, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (pred == y[test]).mean()
    assert accuracy > 0.9, accuracy  # chance is 1/8


def test_impressions_have_position_bias_and_clicks(ds):
    imp = ds.impressions
    ctr = imp.group_by("position").agg(pl.col("clicked").mean()).sort("position")["clicked"]
    assert ctr[0] > 1.5 * ctr[-1], ctr.to_list()
    per_log = imp.group_by("impression_id").agg(pl.col("clicked").any(), pl.col("item_id").n_unique())
    assert per_log["clicked"].mean() > 0.6
    assert (per_log["item_id"] == CFG.impression_size).all()  # shown items are distinct
    # Clicks follow taste: clicked items are in the user's home topic far more often than shown ones.
    j = imp.join(ds.items.select("item_id", "topic"), on="item_id").join(
        ds.users.select("user_id", "home_topic"), on="user_id"
    )
    home = j["topic"] == j["home_topic"]
    assert home.filter(j["clicked"]).mean() > 1.5 * home.mean()


def _recall_at(scores: np.ndarray, targets: np.ndarray, k: int = 20) -> float:
    """scores [Q, I], targets [Q] -> share of targets among each row's top k."""
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def test_next_item_structure_is_learnable(ds):
    """Session structure beats popularity clearly on held-out last clicks."""
    item_index = {iid: k for k, iid in enumerate(ds.items["item_id"])}
    ev = ds.events.sort("session_id", "ts").with_columns(
        item=pl.col("item_id").replace_strict(item_index, return_dtype=pl.Int64),
        n=pl.len().over("session_id"),
        pos=pl.int_range(pl.len()).over("session_id"),
    )
    sessions = ev["session_id"].unique().sort()
    test_sessions = sessions.gather(np.arange(len(sessions))[np.arange(len(sessions)) % 5 == 0])
    is_test = ev["session_id"].is_in(test_sessions.implode())
    train = ev.filter(~is_test)
    held = ev.filter(is_test & (pl.col("n") >= 2))
    last = held.filter(pl.col("pos") == pl.col("n") - 1)["item"].to_numpy()
    prev = held.filter(pl.col("pos") == pl.col("n") - 2)["item"].to_numpy()
    n_items = CFG.items

    pop = np.bincount(train["item"].to_numpy(), minlength=n_items).astype(np.float64)
    tr = train.with_columns(nxt=pl.col("item").shift(-1).over("session_id")).drop_nulls("nxt")
    trans = np.zeros((n_items, n_items))
    np.add.at(trans, (tr["item"].to_numpy(), tr["nxt"].to_numpy()), 1.0)
    tiebreak = 1e-6 * pop / pop.max()

    r_pop = _recall_at(np.broadcast_to(pop, (len(last), n_items)), last)
    r_trans = _recall_at(trans[prev] + tiebreak, last)
    topic = ds.items["topic"].to_numpy()
    r_topic = _recall_at(np.where(topic[None, :] == topic[prev][:, None], pop, 0.0) + tiebreak, last)
    assert len(last) > 500
    assert r_trans > 2 * r_pop and r_trans > r_pop + 0.2, (r_trans, r_pop)
    assert r_topic > 2 * r_pop, (r_topic, r_pop)


def test_bad_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="items=5"):
        generate(SynthConfig(items=5, topics=8), tmp_path / "x")
    with pytest.raises(ConfigError, match="start"):
        generate(SynthConfig(start="yesterday"), tmp_path / "y")
    assert not (tmp_path / "x").exists()


def test_tiny_catalogue_still_valid(tmp_path):
    cfg = SynthConfig(
        users=3,
        items=4,
        events=1_000,
        topics=2,
        impressions=20,
        impression_size=6,
        images=False,
        chunk_events=1_000,
    )
    ds = load_dataset(generate(cfg, tmp_path / "tiny"))
    assert ds.counts()["events"] == 1_000
    per_log = ds.impressions.group_by("impression_id").agg(pl.col("item_id").n_unique(), pl.len())
    assert (per_log["item_id"] == 4).all() and (per_log["len"] == 4).all()  # capped at the catalogue size
