"""A catalogue of bad inputs: each must raise the right error naming file, column/key and row.

Rows are 0-based data rows (the header is not counted), as recemb.data.schema reports them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recemb.config import build_config
from recemb.data.config import TableSourceConfig
from recemb.data.sources import prepare_source
from recemb.data.sources.mind import read_mind
from recemb.data.sources.yoochoose import read_yoochoose
from recemb.errors import ConfigError, DataValidationError

GOOD_EVENTS = "user_id,item_id,ts\nu1,i1,2024-01-01T00:00:00Z\nu1,i2,2024-01-01T00:01:00Z\nu2,i1,2024-01-02T00:00:00Z\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _prepare(tmp_path: Path, **tables) -> None:
    cfg = TableSourceConfig(**{k: v for k, v in tables.items() if k != "columns"}, columns=tables.get("columns", {}))
    prepare_source("table", tmp_path, table=cfg)


def _expect(exc_type, call, *fragments: str) -> str:
    with pytest.raises(exc_type) as e:
        call()
    msg = str(e.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in: {msg}"
    return msg


def test_good_table_is_accepted_and_keeps_string_ids(tmp_path):
    """The control case: the same machinery accepts a sound file (so the failures below are real)."""
    _write(tmp_path, "ev.csv", "uid,iid,when,w\n007,i1,1700000000,2\n007,i2,1700000060,1\n")
    cfg = TableSourceConfig(
        events="ev.csv",
        columns={"events": {"user_id": "uid", "item_id": "iid", "ts": "when", "weight": "w"}},
    )
    ds, extra = prepare_source("table", tmp_path, table=cfg)
    assert ds.events["user_id"].to_list() == ["007", "007"]  # leading zeros kept
    assert ds.events.schema["weight"] == pl.Float32 and ds.items.height == 2 and extra == {}


def test_missing_column(tmp_path):
    _write(tmp_path, "ev.csv", "user_id,ts\nu1,2024-01-01T00:00:00Z\n")
    _expect(
        DataValidationError,
        lambda: _prepare(tmp_path, events="ev.csv"),
        "ev.csv",
        "item_id",
        "missing column",
    )


def test_wrong_type(tmp_path):
    text = (
        "user_id,item_id,ts,weight\n"
        "u1,i1,2024-01-01T00:00:00Z,1\nu1,i2,2024-01-01T00:01:00Z,0.5\nu2,i1,2024-01-02T00:00:00Z,heavy\n"
    )
    _write(tmp_path, "ev.csv", text)
    _expect(
        DataValidationError,
        lambda: _prepare(tmp_path, events="ev.csv"),
        "ev.csv",
        "'weight'",
        "row 2",
        "'heavy'",
    )


def test_null_id(tmp_path):
    _write(
        tmp_path,
        "ev.csv",
        "user_id,item_id,ts\nu1,i1,2024-01-01T00:00:00Z\n,i2,2024-01-01T00:01:00Z\n",
    )
    _expect(
        DataValidationError,
        lambda: _prepare(tmp_path, events="ev.csv"),
        "ev.csv",
        "'user_id'",
        "null",
        "row 1",
    )


def test_unparseable_timestamp(tmp_path):
    _write(
        tmp_path,
        "ev.csv",
        "user_id,item_id,ts\nu1,i1,2024-01-01T00:00:00Z\nu1,i2,2024-01-01T00:01:00Z\nu2,i3,yesterday\n",
    )
    _expect(
        DataValidationError,
        lambda: _prepare(tmp_path, events="ev.csv"),
        "ev.csv",
        "'ts'",
        "row 2",
        "'yesterday'",
    )


def test_empty_file_and_header_only(tmp_path):
    _write(tmp_path, "ev.csv", "")
    _expect(DataValidationError, lambda: _prepare(tmp_path, events="ev.csv"), "ev.csv", "empty")
    _write(tmp_path, "ev2.csv", "user_id,item_id,ts\n")
    _expect(
        DataValidationError,
        lambda: _prepare(tmp_path, events="ev2.csv"),
        "ev2.csv",
        "events table",
        "empty",
    )


def test_duplicate_rows(tmp_path):
    _write(tmp_path, "ev.csv", GOOD_EVENTS + "u1,i2,2024-01-01T00:01:00Z\n")
    _expect(
        DataValidationError,
        lambda: _prepare(tmp_path, events="ev.csv"),
        "ev.csv",
        "share their key",
        "item_id",
        "row 1",
    )


def test_impressions_naming_unknown_items(tmp_path):
    _write(tmp_path, "ev.csv", GOOD_EVENTS)
    _write(tmp_path, "items.csv", "item_id,title\ni1,One\ni2,Two\n")
    _write(
        tmp_path,
        "imp.csv",
        "impression_id,user_id,ts,item_id,position,clicked\n"
        "m1,u1,2024-01-03T00:00:00Z,i1,0,1\nm1,u1,2024-01-03T00:00:00Z,i9,1,0\n",
    )
    _expect(
        DataValidationError,
        lambda: _prepare(tmp_path, events="ev.csv", items="items.csv", impressions="imp.csv"),
        "imp.csv",
        "impressions",
        "item_id='i9'",
        "row 1",
    )


def test_mapping_names_a_column_the_file_lacks(tmp_path):
    _write(tmp_path, "ev.csv", "userId,movieId,timestamp\nu1,i1,1700000000\n")
    msg = _expect(
        DataValidationError,
        lambda: _prepare(
            tmp_path,
            events="ev.csv",
            columns={"events": {"user_id": "userId", "item_id": "itemId", "ts": "timestamp"}},
        ),
        "ev.csv",
        "'itemId'",
        "data.table.columns.events.item_id",
    )
    assert "['userId', 'movieId', 'timestamp']" in msg  # the columns it does have


def test_mapping_for_an_unknown_table(tmp_path):
    _write(tmp_path, "ev.csv", GOOD_EVENTS)
    _expect(
        ConfigError,
        lambda: _prepare(tmp_path, events="ev.csv", columns={"event": {"user_id": "u"}}),
        "data.table.columns",
        "'event'",
    )


def test_unknown_config_key_in_file_and_override():
    _expect(
        ConfigError,
        lambda: build_config({"data": {"sourse": "mind"}}, source="configs/my.yaml"),
        "configs/my.yaml",
        "data.sourse",
        "unknown key",
    )
    _expect(
        ConfigError,
        lambda: build_config(
            {"data": {"source": "table", "table": {"events": "e.csv"}}},
            ["data.table.colums={}"],
            source="cli",
        ),
        "cli",
        "data.table.colums",
    )


def test_missing_file(tmp_path):
    _expect(
        DataValidationError,
        lambda: _prepare(tmp_path, events="nope.parquet"),
        "nope.parquet",
        "no such file",
    )


def test_yoochoose_wrong_header(tmp_path):
    _write(tmp_path, "yoochoose-clicks-100k_train_full.txt", "Session\tItem\tTime\n1\t2\t3.0\n")
    _expect(
        DataValidationError,
        lambda: read_yoochoose(tmp_path),
        "train_full.txt",
        "'SessionId'",
        "SessionId ItemId Time",
    )


def test_mind_bad_time_and_bad_impression_token(tmp_path):
    _write(tmp_path, "news.tsv", "N1\tnews\tpolitics\tT\tA\thttp://u\t[]\t[]\n")
    _write(
        tmp_path,
        "behaviors.tsv",
        "1\tU1\t11/12/2019 2:14:46 PM\tN1\tN1-1 N2-0\n2\tU2\t13/45/2019 9 AM\t\tN1-0\n",
    )
    _expect(
        DataValidationError,
        lambda: read_mind(tmp_path),
        "behaviors.tsv",
        "'time'",
        "row 1",
        "13/45/2019",
    )
    _write(
        tmp_path,
        "behaviors.tsv",
        "1\tU1\t11/12/2019 2:14:46 PM\tN1\tN1-1 N2-0\n2\tU2\t11/12/2019 3:00:00 PM\t\tN1-0 N2\n",
    )
    _expect(
        DataValidationError,
        lambda: read_mind(tmp_path),
        "behaviors.tsv",
        "'impressions'",
        "row 1",
        "'N2'",
    )


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda_names_the_setting(device):
    # Issue 13 ("clean edges"): one resolve_device for every model; before, only item2vec checked and
    # two-tower / content failed inside torch on the first tensor moved to the device.
    import torch

    from recemb.models.device import resolve_device
    from recemb.models.item2vec.config import Item2VecConfig
    from recemb.models.item2vec.epochs import resolve_backend

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _expect(ConfigError, lambda: resolve_device(device, setting="two_tower.device"), "two_tower.device", "CUDA")
    _expect(ConfigError, lambda: resolve_backend(Item2VecConfig(device=device)), "item2vec.device", "CUDA")
    assert resolve_device("auto").type == "cpu"
