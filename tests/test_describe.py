"""``describe``: dataset statistics agree with the loaded tables, on synth data and on ML-100K."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recemb.data import schema
from recemb.data.config import SynthConfig
from recemb.data.dataset import Dataset, load_dataset, write_dataset
from recemb.data.describe import describe, format_description, gini
from recemb.data.paths import data_dir
from recemb.data.synth import generate
from recemb.errors import DataValidationError

CFG = SynthConfig(users=150, items=120, events=6_000, topics=5, impressions=200, images=False, seed=3)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = generate(CFG, tmp_path_factory.mktemp("describe") / "ds")
    return out, load_dataset(out), describe(out)


def test_gini_by_hand():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    # One of n items holds everything: G = (n - 1) / n.
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)
    # [1, 3]: sum (2i - n - 1) x_i / (n sum x) = (-1*1 + 1*3) / (2 * 4) = 0.25
    assert gini(np.array([3, 1])) == pytest.approx(0.25)
    assert gini(np.array([])) == 0.0


def test_counts_match_load_dataset(synth):
    _, ds, d = synth
    for key, value in ds.counts().items():
        assert d["counts"][key] == value, key
    assert d["counts"]["users_table"] == CFG.users
    assert d["name"] == "synth"


def test_distributions_are_consistent(synth):
    _, ds, d = synth
    assert sum(d["events_per_type"].values()) == ds.counts()["events"]
    assert list(d["events_per_type"]) == ["click", "purchase"]  # most frequent first
    s = d["session_length"]
    assert s["min"] >= 1 and s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert s["mean"] == pytest.approx(ds.counts()["events"] / ds.counts()["sessions"])
    u = d["events_per_user"]
    assert u["mean"] == pytest.approx(ds.counts()["events"] / ds.counts()["users"])
    assert u["max"] == ds.events.group_by("user_id").len()["len"].max()
    pop = d["item_popularity"]
    counts = ds.events.group_by("item_id").len()["len"].sort(descending=True).to_numpy()
    assert pop["top10pct_share"] == pytest.approx(counts[:12].sum() / counts.sum())  # 10% of 120 items
    assert pop["top1pct_share"] == pytest.approx(counts[:2].sum() / counts.sum())  # ceil(1.2) = 2 items
    assert 0 < pop["gini"] < 1
    start = datetime(2024, 1, 1, tzinfo=UTC)
    tr = d["time_range"]
    assert (
        start
        <= datetime.fromisoformat(tr["start"])
        < datetime.fromisoformat(tr["end"])
        <= start + timedelta(days=CFG.days)
    )
    imp = d["impressions"]
    assert imp["ctr"] == pytest.approx(ds.impressions["clicked"].mean())
    assert imp["clicks_per_impression"] == pytest.approx(ds.impressions["clicked"].sum() / CFG.impressions)
    assert set(imp["ctr_by_position"]) == set(range(CFG.impression_size))


def test_catalogue_items_without_events_count(synth, tmp_path):
    _, ds, _ = synth
    extra = pl.DataFrame(
        {
            "item_id": ["never_seen"],
            "title": ["x"],
            "text": [""],
            "category": [[]],
            "image_path": [None],
        },
        schema={c.name: c.dtype for c in schema.ITEMS.columns},
    )
    items = pl.concat([ds.items.select(schema.ITEMS.names), extra])
    out = write_dataset(Dataset("plus", events=ds.events, items=items), tmp_path / "plus")
    d = describe(out)
    assert d["counts"]["items"] == CFG.items + 1
    assert d["item_popularity"]["items_without_events"] == 1
    assert d["impressions"] is None and "users_table" not in d["counts"]


def test_format_is_aligned_text(synth):
    _, _, d = synth
    text = format_description(d)
    assert text.startswith("dataset synth")
    for heading in (
        "counts",
        "time range",
        "events per type",
        "session length",
        "item popularity",
        "impressions",
    ):
        assert f"\n{heading}" in text
    count_lines = text.split("counts\n")[1].split("\n\n")[0].splitlines()
    assert len({len(line) for line in count_lines}) == 1  # right-aligned numbers
    assert f"{CFG.events:,}" in text


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataValidationError, match="no events.parquet"):
        describe(tmp_path)


def test_movielens_100k(tmp_path):
    path = data_dir() / "ml-100k" / "u.data"
    if not path.exists():
        pytest.skip(f"{path} not found (set RECEMB_DATA_DIR to a folder holding ml-100k/)")
    raw = pl.read_csv(path, separator="\t", has_header=False, new_columns=["user_id", "item_id", "rating", "ts"])
    events = schema.coerce(
        raw.with_columns(event=pl.lit("rating"), weight=pl.col("rating").cast(pl.Float32)).drop("rating"),
        "events",
        path,
    )
    d = describe(write_dataset(Dataset("ml-100k", events=events), tmp_path / "ml"))
    assert d["counts"] == {
        "users": 943,
        "items": 1682,
        "events": 100_000,
        "event_items": 1682,
        "sessions": 0,
    }
    assert d["session_length"] is None
    assert d["events_per_user"]["min"] == 20  # every ML-100K user has at least 20 ratings
    assert d["events_per_type"] == {"rating": 100_000}
    assert d["time_range"]["start"].startswith("1997-09") and d["time_range"]["end"].startswith("1998-04")
    assert d["item_popularity"]["items_with_1_event"] == 141
    # a rating log never repeats a (user, item): seen items are excluded under exclude_seen: auto
    assert d["repeats"] == {"repeat_share": 0.0, "exclude_seen_auto": True}
    assert "no session ids" in format_description(d) and "repeat_share" in format_description(d)
