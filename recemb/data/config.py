"""The ``data:`` section: which source to prepare and how (synthetic generator, generic tables, sessions)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recemb.section import Section


class SynthConfig(Section):
    """The synthetic generator (recemb.data.synth): the embedded default dataset."""

    users: int = Field(2_000, ge=1)
    items: int = Field(1_000, ge=2)
    events: int = Field(200_000, ge=1)  # total behaviour events (approximate, +-1 session)
    topics: int = Field(20, ge=1)
    zipf_exponent: float = Field(1.0, ge=0)  # item popularity within a topic
    mean_session_length: float = Field(6.0, gt=1)
    topic_drift: float = Field(0.15, ge=0, le=1)  # chance that the next click changes topic
    repeat_prob: float = Field(0.05, ge=0, le=1)  # chance that the next click repeats an earlier item
    impressions: int = Field(2_000, ge=0)  # impression logs (each shows impression_size items)
    impression_size: int = Field(10, ge=2)
    images: bool = True  # write 64x64 PNGs per item
    image_size: int = Field(64, ge=8)
    chinese_fraction: float = Field(0.2, ge=0, le=1)  # share of items with Chinese titles/text
    start: str = "2024-01-01T00:00:00Z"
    days: int = Field(60, ge=1)
    seed: int = 0
    chunk_events: int = Field(1_000_000, ge=1_000)  # rows per Parquet write (bounds memory)


class TableSourceConfig(Section):
    """A generic CSV/Parquet source and its mapping onto canonical columns."""

    events: str
    items: str | None = None
    users: str | None = None
    impressions: str | None = None
    # canonical column -> source column, per table, e.g. {events: {user_id: userId}}
    columns: dict[str, dict[str, str]] = Field(default_factory=dict)
    separator: str = ","


class SessionizeConfig(Section):
    gap_minutes: float = Field(30.0, gt=0)  # inactivity gap when the source has no session id


class DataConfig(Section):
    source: Literal["synth", "movielens-100k", "ml-100k-content", "yoochoose", "mind", "table"] = "synth"
    path: str | None = None  # raw source directory; default: $RECEMB_DATA_DIR/<card's folder>
    prepared: str | None = None  # where canonical tables land; default: <run>/data
    synth: SynthConfig = SynthConfig()
    table: TableSourceConfig | None = None
    sessionize: SessionizeConfig = SessionizeConfig()
    min_count: int = Field(1, ge=1)  # items seen fewer times are dropped from vocabularies
