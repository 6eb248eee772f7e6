"""Real sources from data_dir() with their known counts, plus tiny fixtures for the layouts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recemb.data.dataset import load_dataset, write_dataset
from recemb.data.paths import data_dir
from recemb.data.sources import SOURCE_NAMES, prepare_source
from recemb.data.sources.movielens import read_content, read_movielens
from recemb.errors import DataValidationError


def _need(folder: str) -> Path:
    path = data_dir() / folder
    if not path.is_dir():
        pytest.skip(f"{path} missing: real-data test needs the shared data folder (RECEMB_DATA_DIR)")
    return path


def _ids_are_strings(df: pl.DataFrame) -> None:
    for col in ("user_id", "item_id", "session_id", "impression_id"):
        if col in df.columns:
            assert df.schema[col] == pl.String, col


def _ts_sorted(events: pl.DataFrame) -> None:
    assert events["ts"].is_sorted(), "events must come in time order"


# --- MovieLens 100K ---------------------------------------------------------------------------


def test_movielens_counts_types_and_quirks():
    ds, extra = read_movielens(_need("ml-100k"), content_dir=None)
    ev = ds.events
    assert (ev.height, ev["user_id"].n_unique(), ds.items.height) == (100_000, 943, 1_682)
    assert ds.users.height == 943 and ds.users.schema["age"] == pl.Int16
    _ids_are_strings(ev)
    _ts_sorted(ev)
    assert ev["event"].unique().to_list() == ["rating"] and ev["weight"].unique().to_list() == [1.0]
    assert ev.schema["rating"] == pl.Int8 and ev["rating"].min() == 1 and ev["rating"].max() == 5
    items = ds.items.sort("item_id")
    assert items.schema["year"] == pl.Int16
    # u.item is latin-1: é must survive as é, not as a replacement character.
    assert "Misérables, Les (1995)" in items["title"].to_list()
    unknown = items.filter(pl.col("item_id") == "267").row(0, named=True)
    assert unknown["year"] is None and unknown["category"] == ["unknown"]
    toy = items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["category"] == ["Animation", "Children's", "Comedy"] and toy["year"] == 1995
    assert toy["text"] == "" and toy["image_path"] is None and extra == {}


def test_movielens_content_text_images_and_round_trip(tmp_path):
    _need("ml-100k")
    content = _need("ml-100k-content")
    ds, extra = prepare_source("ml-100k-content")
    assert extra == {"images": content / "posters"}
    items = ds.items
    assert items.height == 1_682  # items.csv's 1,746 rows collapse to one per id
    assert int((items["text"] != "").sum()) == 1_682 - 18  # 18 empty overviews
    with_img = items.filter(pl.col("image_path").is_not_null())
    assert with_img.height == 1_663
    assert with_img["image_path"].str.contains(r"^images/\d+\.jpg$").all()
    # The prepared dataset stands alone: every image_path resolves under its root.
    out = write_dataset(ds, tmp_path / "ml", extra)
    back = load_dataset(out)
    paths = back.items["image_path"].drop_nulls().to_list()
    assert all((back.root / p).is_file() for p in paths)


def test_content_duplicates_resolved_deterministically(tmp_path):
    (tmp_path / "posters").mkdir()
    (tmp_path / "posters" / "2.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "items.csv").write_text(
        "movie_id,title,overview,vote_count\n"
        "1,A,,900\n"          # empty overview loses even with more votes
        "1,A,first text,10\n"
        "1,A,more votes,20\n"
        "2,B,only,5\n"
    )  # fmt: skip
    content, posters = read_content(tmp_path)
    got = dict(zip(content["item_id"], content["text"]))
    assert got == {"1": "more votes", "2": "only"}
    assert dict(zip(content["item_id"], content["image_path"])) == {"1": None, "2": "images/2.jpg"}
    assert posters == tmp_path / "posters"


def _tiny_grouplens(folder: Path) -> None:
    folder.mkdir()
    (folder / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t4\t881250951\n")
    genres = "|".join(["0"] * 19)
    flags20 = ["0"] * 19
    flags20[1] = flags20[8] = "1"
    (folder / "u.item").write_bytes(
        f"10|Caf\xe9 (1995)|01-Jan-1995||http://x|{genres}\n".encode("latin-1")
        + f"20|Other (1996)|||http://y|{'|'.join(flags20)}\n".encode("latin-1")
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")


def _tiny_recbole(folder: Path) -> None:
    folder.mkdir()
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t4\t881250951\n"
    )
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tCafé\t1995\t\n20\tOther\t\tAction Drama\n"
    )
    (folder / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n"
    )


def test_grouplens_and_recbole_layouts_agree(tmp_path):
    _tiny_grouplens(tmp_path / "gl")
    _tiny_recbole(tmp_path / "rb")
    gl, _ = read_movielens(tmp_path / "gl")
    rb, _ = read_movielens(tmp_path / "rb")
    assert (gl.meta["layout"], rb.meta["layout"]) == ("grouplens", "recbole")
    cols = ["user_id", "item_id", "ts", "event", "weight", "rating"]
    assert gl.events.select(cols).equals(rb.events.select(cols))
    assert gl.users.equals(rb.users)
    assert gl.items["category"].to_list() == rb.items["category"].to_list() == [[], ["Action", "Drama"]]
    assert gl.items["title"].to_list() == ["Café (1995)", "Other (1996)"]
    assert gl.items["year"].to_list() == [1995, None]


# --- Yoochoose ----------------------------------------------------------------------------------


def test_yoochoose_counts_split_and_duplicates():
    ds, extra = prepare_source("yoochoose", _need("yoochoose-100k"))
    ev = ds.events
    _ids_are_strings(ev)
    _ts_sorted(ev)
    assert extra == {}
    assert (ev["user_id"] == ev["session_id"]).all() and ev["event"].unique().to_list() == ["click"]
    assert ds.meta["raw_rows"] == {"train": 70_278, "test": 13_568}
    # train_full holds exactly one exact-duplicate row; it is dropped and counted.
    assert ds.meta["duplicates_dropped"] == {"train": 1, "test": 0}
    train = ev.filter(pl.col("split") == "train")
    test = ev.filter(pl.col("split") == "test")
    assert (train.height, train["session_id"].n_unique(), train["item_id"].n_unique()) == (
        70_277,
        17_794,
        2_933,
    )
    assert (test.height, test["session_id"].n_unique()) == (13_568, 3_416)
    assert ds.items.height == 2_933
    assert train["ts"].max() < test["ts"].min()  # session-rec's split is by time


# --- MIND ----------------------------------------------------------------------------------------


def test_mind_counts_histories_and_stub_items():
    folder = _need("mind-small-subset")
    ds, _ = prepare_source("mind", folder)
    imp, ev, items = ds.impressions, ds.events, ds.items
    _ids_are_strings(imp)
    _ids_are_strings(ev)
    _ts_sorted(ev)
    assert imp["impression_id"].n_unique() == 5_000
    assert imp.height == 189_359 and int(imp["clicked"].sum()) == 7_542
    assert imp["user_id"].n_unique() == 4_637
    # Positions are 0..m-1 within each impression.
    pos = imp.group_by("impression_id").agg(
        pl.col("position").min().alias("lo"), pl.col("position").max().alias("hi"), pl.len()
    )
    assert (pos["lo"] == 0).all() and (pos["hi"] == pos["len"] - 1).all()
    # The history is taken once per user: events per user == that user's history length.
    beh = pl.read_csv(
        folder / "behaviors.tsv",
        separator="\t",
        has_header=False,
        quote_char=None,
        new_columns=["iid", "user_id", "time", "history", "imps"],
        schema_overrides={"iid": pl.String},
    )
    hist_len = (
        beh.unique("user_id")
        .with_columns(
            pl.col("history")
            .fill_null("")
            .str.split(" ")
            .list.eval(pl.element().filter(pl.element() != ""))
            .list.len()
            .alias("n")
        )
        .filter(pl.col("n") > 0)
        .select("user_id", "n")
    )
    per_user = ev.group_by("user_id").len().join(hist_len, on="user_id", how="full", coalesce=True)
    assert per_user.height == hist_len.height and (per_user["len"] == per_user["n"]).all()
    # Every history event precedes the user's first impression.
    first_imp = imp.group_by("user_id").agg(pl.col("ts").min().alias("first"))
    last_hist = ev.group_by("user_id").agg(pl.col("ts").max().alias("last"))
    assert last_hist.join(first_imp, on="user_id").select((pl.col("last") < pl.col("first")).all()).item()
    # Items: the 2,000 news rows plus stubs for every other id seen.
    assert int(items["has_content"].sum()) == 2_000
    seen = pl.concat([ev["item_id"], imp["item_id"]]).unique()
    assert seen.is_in(items["item_id"].implode()).all()
    n = items.filter(pl.col("item_id") == "N34700").row(0, named=True)
    assert n["category"] == ["news", "newspolitics"] and n["text"].startswith("As music blasted")


# --- dispatch ----------------------------------------------------------------------------------


def test_unknown_source_and_missing_folder_messages(tmp_path):
    with pytest.raises(DataValidationError) as e:
        prepare_source("movielens-1m")
    assert all(n in str(e.value) for n in SOURCE_NAMES)
    with pytest.raises(DataValidationError) as e:
        prepare_source("yoochoose", tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "recemb data fetch yoochoose" in str(e.value)
    with pytest.raises(DataValidationError, match="data.table"):
        prepare_source("table")
