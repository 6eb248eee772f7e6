"""The synthetic generator: recemb's embedded default dataset (``recemb data synth``).

It writes a prepared dataset directory (see :mod:`recemb.data.dataset`) whose
behaviour has known, learnable structure, so that every model can be checked
against a ground truth without downloading anything.

Generative model (independent ``np.random.default_rng`` streams spawned from ``cfg.seed``,
one per part, so e.g. turning images off leaves the events unchanged):

- **Topics** ``t = 0..T-1`` with a global popularity ``pi ~ Dirichlet(5)``;
  each topic has up to ``N_SUBCATS`` sub-categories.
- **Items** are spread evenly over topics (then shuffled), round-robin over
  their topic's sub-categories; within a topic, item of popularity rank ``r``
  has weight ``r ** -zipf_exponent``. Text: words from a per-topic and a
  per-sub-category vocabulary plus common English filler; a
  ``chinese_fraction`` share of items gets Chinese title/text from per-topic
  character vocabularies. Images: a shape per ``topic % 8`` and a hue per
  topic, with jittered position, size, hue and background.
- **Users** have tastes ``theta_u ~ Dirichlet(0.15 * T * pi)`` (a few topics
  dominate), a log-normal activity, and attributes correlated with their
  ``home_topic = argmax theta_u`` (country, age band).
- **Sessions**: each user gets at least one session, the rest go to users in
  proportion to activity; lengths are geometric with mean
  ``mean_session_length``; start times uniform over ``days`` from ``start``,
  gaps of ~45 s (1 s to 20 min, so a 30-min gap sessionizer agrees).
  The first click draws a (topic, sub-category) segment from ``theta_u``;
  each later click starts a new segment with probability ``topic_drift``
  (topic redrawn from ``theta_u``, so it may be the same one). Within a
  segment an item is drawn by Zipf weight from the sub-category with
  probability ``SUB_FOCUS``, else from the whole topic. With probability
  ``repeat_prob`` a click instead repeats a uniformly chosen earlier item of
  the session. Event type: ``purchase`` (weight 3) with probability
  ``0.01 + 0.05 * theta_u[t_i] / max(theta_u)``, else ``click`` (weight 1).
- **Impressions**: a user drawn by activity sees ``impression_size`` distinct
  items, each slot filled from the user's tastes or from the observed event
  popularity (half and half); clicked with probability
  ``min(1, 0.03 + 0.8 * theta_u[t_i] / max(theta_u) / log2(position + 2))``.
  Impressions happen after the events' period.

Events are generated and written in chunks of ``cfg.chunk_events`` rows with
a ``pyarrow.parquet.ParquetWriter`` (one row group per chunk), so memory stays
bounded at any event count; no Python loop runs per event or per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from PIL import Image

from recemb import __version__
from recemb.data import schema
from recemb.data.config import SynthConfig
from recemb.errors import ConfigError
from recemb.io import atomic_dir, sha256_file, write_json
from recemb.section import config_to_dict

N_SUBCATS = 4  # sub-categories per topic (fewer when a topic has fewer items)
SUB_FOCUS = 0.6  # chance that a click stays inside the segment's sub-category
TOPIC_WORDS, SUB_WORDS, ZH_TOPIC_CHARS = 30, 6, 24  # vocabulary sizes
N_SHAPES = 8
PURCHASE_WEIGHT = 3.0
MEAN_GAP_S, MAX_GAP_S = 45.0, 1200

_FILLER = (
    "the a an of and with for in on to new best classic edition set pack series "
    "collection premium original special guide story life world home day night "
    "great little big first last deluxe mini pro plus light dark modern simple"
).split()
_CONSONANTS = list("bdfgklmnprstvz") + ["ch", "sh", "th", "br", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
# Common simplified characters; per-topic vocabularies are drawn from them so
# that character n-grams carry the topic.
_ZH_CHARS = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事"
    "其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主"
    "没公从知使点业本水高理长物开手山电气意产动身全正新部表实力平明重体合相市内外东西南北文化美花海风雨"
    "春夏秋冬音乐书画茶酒米饭鱼肉菜果红绿蓝白黑金银石木火土光影山川河湖江岛城镇村路车船飞机星月云雪梦"
    "爱情友笑歌舞剧诗词球赛跑游泳医药健康科技网络游戏电影视频新闻体育旅行服装鞋包手机电脑相机家居厨房"
)
_COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "BR", "IN", "CN", "JP", "KR", "MX"]
_AGE_BANDS = ["<18", "18-24", "25-34", "35-44", "45-54", "55+"]


@dataclass
class _World:
    """Ground truth shared by the event, impression and content generators."""

    item_topic: np.ndarray  # [I] int, topic of each item
    item_sub: np.ndarray  # [I] int, sub-category index within its topic
    item_rank: np.ndarray  # [I] int, 1-based popularity rank within its topic
    n_sub: np.ndarray  # [T] sub-categories per topic
    topic_sampler: tuple[np.ndarray, np.ndarray]  # ragged sampler: item | topic
    group_sampler: tuple[np.ndarray, np.ndarray]  # ragged sampler: item | topic * N_SUBCATS + sub
    taste: np.ndarray  # [U, T] float64, rows sum to 1
    taste_max: np.ndarray  # [U] each user's strongest taste
    taste_cdf: np.ndarray  # [U * T] ragged cdf over topics per user
    activity_cdf: np.ndarray  # [U] cdf of session share per user
    user_perm: np.ndarray  # [U] order in which users get their guaranteed first session
    topic_pop: np.ndarray  # [T]
    user_ids: pl.Series
    item_ids: pl.Series


# ---------------------------------------------------------------- sampling


def _ragged_sampler(groups: np.ndarray, weights: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Build a sampler for many categorical distributions at once.

    ``groups[k]`` is the distribution member ``k`` belongs to, ``weights[k]``
    its unnormalised weight. Returns ``(order, cdf)``: members sorted by group
    and the cdf shifted by the group index (group ``g`` spans ``(g, g + 1]``),
    so one ``searchsorted`` draws from a different group per query.
    """
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    w = weights[order].astype(np.float64)
    totals = np.bincount(g, weights=w, minlength=n_groups)
    before = np.cumsum(totals) - totals
    safe = np.where(totals[g] > 0, totals[g], 1.0)
    within = (np.cumsum(w) - before[g]) / safe
    last = np.r_[g[1:] != g[:-1], True]
    within[last] = 1.0  # exact upper end: a query g + u with u < 1 never leaves group g
    return order, g + np.minimum(within, 1.0)


def _draw(sampler: tuple[np.ndarray, np.ndarray], groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One member per entry of ``groups`` (each group must be non-empty)."""
    order, cdf = sampler
    idx = np.searchsorted(cdf, groups + rng.random(len(groups)), side="right")
    return order[np.minimum(idx, len(order) - 1)]


def _draw_topics(world: _World, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A topic per entry of ``users``, from each user's taste."""
    t = world.taste.shape[1]
    idx = np.searchsorted(world.taste_cdf, users + rng.random(len(users)), side="right")
    return np.minimum(idx, len(world.taste_cdf) - 1) - users * t


def _draw_users(world: _World, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` users drawn in proportion to activity."""
    return np.minimum(
        np.searchsorted(world.activity_cdf, rng.random(n), side="right"),
        len(world.activity_cdf) - 1,
    )


def _ids(prefix: str, n: int) -> pl.Series:
    """``prefix`` + zero-padded 0..n-1 (sortable string ids)."""
    width = len(str(max(n - 1, 0)))
    return pl.select(
        (pl.lit(prefix) + pl.int_range(n, dtype=pl.Int64).cast(pl.String).str.zfill(width)).alias("id")
    ).to_series()


# ---------------------------------------------------------------- world


def _check(cfg: SynthConfig) -> None:
    if cfg.items < cfg.topics:
        raise ConfigError(
            f"data.synth.items={cfg.items} is smaller than data.synth.topics={cfg.topics}: every topic "
            f"needs at least one item; raise items or lower topics"
        )
    try:
        _start(cfg)
    except ValueError:
        raise ConfigError(
            f"data.synth.start={cfg.start!r} is not an ISO 8601 time, e.g. 2024-01-01T00:00:00Z"
        ) from None


def _start(cfg: SynthConfig) -> datetime:
    ts = datetime.fromisoformat(cfg.start)  # accepts a trailing "Z" since Python 3.11
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _make_world(cfg: SynthConfig, rng: np.random.Generator) -> _World:
    n_items, n_users, n_topics = cfg.items, cfg.users, cfg.topics
    item_topic = rng.permutation(np.arange(n_items) % n_topics)
    per_topic = np.bincount(item_topic, minlength=n_topics)
    # Rank within topic: a random order of the topic's items.
    key = np.lexsort((rng.random(n_items), item_topic))
    rank = np.empty(n_items, dtype=np.int64)
    starts = np.cumsum(per_topic) - per_topic
    rank[key] = np.arange(n_items) - starts[item_topic[key]] + 1
    n_sub = np.minimum(N_SUBCATS, per_topic)
    item_sub = (rank - 1) % n_sub[item_topic]  # round-robin: every sub-category gets head and tail items
    zipf = rank.astype(np.float64) ** -cfg.zipf_exponent

    topic_pop = rng.dirichlet(np.full(n_topics, 5.0))
    taste = rng.dirichlet(np.maximum(0.15 * n_topics * topic_pop, 1e-3), size=n_users)
    taste = taste / taste.sum(axis=1, keepdims=True)
    within = np.cumsum(taste, axis=1)
    within[:, -1] = 1.0
    taste_cdf = (np.arange(n_users)[:, None] + np.minimum(within, 1.0)).ravel()
    activity = rng.lognormal(0.0, 1.0, n_users)
    activity_cdf = np.cumsum(activity) / activity.sum()
    activity_cdf[-1] = 1.0
    return _World(
        item_topic=item_topic,
        item_sub=item_sub,
        item_rank=rank,
        n_sub=n_sub,
        topic_sampler=_ragged_sampler(item_topic, zipf, n_topics),
        group_sampler=_ragged_sampler(item_topic * N_SUBCATS + item_sub, zipf, n_topics * N_SUBCATS),
        taste=taste,
        taste_max=taste.max(axis=1),
        taste_cdf=taste_cdf,
        activity_cdf=activity_cdf,
        user_perm=rng.permutation(n_users),
        topic_pop=topic_pop,
        user_ids=_ids("u", n_users),
        item_ids=_ids("i", n_items),
    )


# ---------------------------------------------------------------- events


def _session_lengths(cfg: SynthConfig, target: int, final: bool, rng: np.random.Generator) -> np.ndarray:
    """Geometric session lengths summing to ``target`` (exactly when ``final``, else >= target)."""
    p = 1.0 / cfg.mean_session_length
    lengths = np.empty(0, dtype=np.int64)
    while lengths.sum() < target:
        more = rng.geometric(p, int(1.1 * (target - lengths.sum()) * p) + 16)
        lengths = np.concatenate([lengths, more])
    cs = np.cumsum(lengths)
    n = int(np.searchsorted(cs, target)) + 1  # first session that reaches the target
    lengths = lengths[:n]
    if final:
        lengths[-1] -= int(cs[n - 1]) - target  # trim the last session: the total is exact
    return lengths


def _event_chunk(
    cfg: SynthConfig,
    world: _World,
    lengths: np.ndarray,
    first_session: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Index arrays of one chunk of sessions: user, item, ts (unix s), purchase, session (global index)."""
    n_s, n = len(lengths), int(lengths.sum())
    sess = np.repeat(np.arange(n_s), lengths)  # [n] local session of each event
    start_idx = np.cumsum(lengths) - lengths
    pos = np.arange(n) - start_idx[sess]
    sess_global = first_session + np.arange(n_s)

    users_s = _draw_users(world, n_s, rng)
    guaranteed = sess_global < len(world.user_perm)  # the first U sessions go one to each user
    users_s[guaranteed] = world.user_perm[sess_global[guaranteed]]
    user = users_s[sess]

    # Segments: a new (topic, sub-category) at each session start and at each drift.
    switch = (pos == 0) | (rng.random(n) < cfg.topic_drift)
    seg_users = user[switch]
    seg_topic = _draw_topics(world, seg_users, rng)
    seg_sub = np.floor(rng.random(len(seg_topic)) * world.n_sub[seg_topic]).astype(np.int64)
    seg = np.cumsum(switch) - 1
    topic, sub = seg_topic[seg], seg_sub[seg]

    item = np.empty(n, dtype=np.int64)
    focus = rng.random(n) < SUB_FOCUS
    item[focus] = _draw(world.group_sampler, topic[focus] * N_SUBCATS + sub[focus], rng)
    item[~focus] = _draw(world.topic_sampler, topic[~focus], rng)
    # A Zipf head can take half of a sub-category's mass; without this, ~40% of
    # clicks would repeat the previous item by chance. Redraw those from the
    # whole topic (a few passes; what remains is rare and harmless).
    for _ in range(3):
        again = np.flatnonzero(pos > 0)
        again = again[item[again] == item[again - 1]]
        if len(again) == 0:
            break
        item[again] = _draw(world.topic_sampler, topic[again], rng)

    # Repeats point at an earlier position of the same session; resolve chains
    # of repeats by pointer jumping (depth is logarithmic).
    repeat = (pos > 0) & (rng.random(n) < cfg.repeat_prob)
    ptr = np.arange(n)
    ptr[repeat] = start_idx[sess[repeat]] + np.floor(rng.random(int(repeat.sum())) * pos[repeat]).astype(np.int64)
    while True:
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt
    item = item[ptr]

    period = cfg.days * 86_400
    sess_start = rng.integers(0, max(period - 3_600, 1), n_s)
    gaps = np.clip(np.rint(rng.exponential(MEAN_GAP_S, n)), 1, MAX_GAP_S).astype(np.int64)
    gaps[pos == 0] = 0
    cs = np.cumsum(gaps)
    ts = sess_start[sess] + cs - cs[start_idx[sess]]

    # [n] lookups only: world.taste[user] would be [n, T] (16 GB for 1M events x 2,000 topics).
    rel = world.taste[user, world.item_topic[item]] / world.taste_max[user]
    purchase = rng.random(n) < 0.01 + 0.05 * rel
    return {
        "user": user,
        "item": item,
        "ts": ts,
        "purchase": purchase,
        "session": sess_global[sess],
        "n_sessions": np.int64(n_s),
    }


def _event_frame(arrays: dict[str, np.ndarray], world: _World, start_us: int, session_width: int) -> pl.DataFrame:
    """Canonical events frame (schema.EVENTS) of one chunk."""
    session_id = pl.select(
        pl.lit("s") + pl.lit(pl.Series(arrays["session"])).cast(pl.String).str.zfill(session_width)
    ).to_series()
    return pl.DataFrame(
        {
            "user_id": world.user_ids.gather(arrays["user"]),
            "item_id": world.item_ids.gather(arrays["item"]),
            "ts": pl.Series(start_us + arrays["ts"] * 1_000_000, dtype=pl.Int64)
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone("UTC"),
            "event": pl.Series(np.where(arrays["purchase"], "purchase", "click")).cast(pl.String),
            "weight": pl.Series(np.where(arrays["purchase"], PURCHASE_WEIGHT, 1.0).astype(np.float32)),
            "session_id": session_id,
        }
    )


@dataclass(frozen=True)
class _EventStats:
    events: int
    users: int
    sessions: int
    item_count: np.ndarray  # [items] events per item


def _write_events(cfg: SynthConfig, world: _World, path: Path, rng: np.random.Generator) -> _EventStats:
    """Stream events to ``path`` in chunks; return counts and per-item event counts."""
    start_us = int(_start(cfg).timestamp()) * 1_000_000
    session_width = len(str(cfg.events))  # there are never more sessions than events
    user_seen = np.zeros(cfg.users, dtype=bool)
    item_count = np.zeros(cfg.items, dtype=np.int64)
    written, sessions, writer = 0, 0, None
    try:
        for k, arrays in enumerate(_iter_chunks(cfg, world, rng)):
            df = _event_frame(arrays, world, start_us, session_width)
            schema.validate(df, "events", f"{path} (chunk {k})")
            table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
            user_seen[arrays["user"]] = True
            item_count += np.bincount(arrays["item"], minlength=cfg.items)
            written += df.height
            sessions += int(arrays["n_sessions"])
    finally:
        if writer is not None:
            writer.close()
    return _EventStats(events=written, users=int(user_seen.sum()), sessions=sessions, item_count=item_count)


def _iter_chunks(cfg: SynthConfig, world: _World, rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
    done, first_session = 0, 0
    while done < cfg.events:
        target = min(cfg.chunk_events, cfg.events - done)
        final = done + target >= cfg.events
        lengths = _session_lengths(cfg, target, final, rng)
        yield _event_chunk(cfg, world, lengths, first_session, rng)
        done += int(lengths.sum())
        first_session += len(lengths)


# ---------------------------------------------------------------- items and users


def _pseudo_words(n: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    """``n`` distinct English-like words of 2-3 syllables, none in ``taken``."""
    out: list[str] = []
    while len(out) < n:
        m = 2 * (n - len(out)) + 16
        syl = rng.integers(0, len(_CONSONANTS), (m, 3)), rng.integers(0, len(_VOWELS), (m, 3))
        n_syl = rng.integers(2, 4, m)
        for row in range(m):  # per vocabulary word, not per event: a few thousand at most
            w = "".join(_CONSONANTS[syl[0][row, j]] + _VOWELS[syl[1][row, j]] for j in range(n_syl[row]))
            if w not in taken:
                taken.add(w)
                out.append(w)
                if len(out) == n:
                    break
    return out


def _join_tokens(item: np.ndarray, tokens: np.ndarray, sep: str, n_items: int) -> pl.Series:
    """Join ``tokens`` per ``item`` (rows in order) into one string per item 0..n_items-1."""
    df = pl.DataFrame({"i": item, "w": tokens}).group_by("i", maintain_order=True).agg(pl.col("w").str.join(sep))
    full = pl.DataFrame({"i": np.arange(n_items, dtype=item.dtype)}).join(df, on="i", how="left")
    return full["w"].fill_null("")


def _token_matrix(lengths: np.ndarray, max_len: int, pick) -> tuple[np.ndarray, np.ndarray]:
    """(item index, token index) of every used slot of a ``[n, max_len]`` matrix built by ``pick``."""
    tok = pick((len(lengths), max_len))
    used = np.arange(max_len)[None, :] < lengths[:, None]
    rows = np.broadcast_to(np.arange(len(lengths))[:, None], used.shape)
    return rows[used], tok[used]


def _make_text(cfg: SynthConfig, world: _World, rng: np.random.Generator) -> tuple[pl.DataFrame, dict]:
    """Titles, texts and category names of all items; returns (frame, notes)."""
    n, t = cfg.items, cfg.topics
    taken: set[str] = set(_FILLER)
    topic_names = _pseudo_words(t, rng, taken)
    sub_names = np.array(_pseudo_words(t * N_SUBCATS, rng, taken), dtype=object)
    topic_vocab = np.array(_pseudo_words(t * TOPIC_WORDS, rng, taken), dtype=object)
    sub_vocab = np.array(_pseudo_words(t * N_SUBCATS * SUB_WORDS, rng, taken), dtype=object)
    filler = np.array(_FILLER, dtype=object)
    zh = np.array(list(dict.fromkeys(_ZH_CHARS)), dtype=object)
    zh_vocab = np.stack([rng.choice(len(zh), ZH_TOPIC_CHARS, replace=False) for _ in range(t)])  # [T, 24]

    topic, group = world.item_topic, world.item_topic * N_SUBCATS + world.item_sub
    is_zh = np.zeros(n, dtype=bool)
    is_zh[rng.permutation(n)[: round(cfg.chinese_fraction * n)]] = True

    def english(shape, p_topic, p_sub):
        """Word strings: topic / sub-category / filler words mixed by slot."""
        r = rng.random(shape)
        tw = topic_vocab[topic[:, None] * TOPIC_WORDS + rng.zipf(1.5, shape).clip(1, TOPIC_WORDS) - 1]
        sw = sub_vocab[group[:, None] * SUB_WORDS + rng.integers(0, SUB_WORDS, shape)]
        fw = filler[rng.integers(0, len(filler), shape)]
        return np.where(r < p_topic, tw, np.where(r < p_topic + p_sub, sw, fw))

    def chinese(shape):
        return zh[zh_vocab[topic[:, None], rng.integers(0, ZH_TOPIC_CHARS, shape)]]

    out = {}
    for col, (lo, hi, zlo, zhi, p_topic, p_sub) in {
        "title": (2, 5, 4, 8, 0.6, 0.25),
        "text": (8, 25, 16, 41, 0.5, 0.2),
    }.items():
        en_len = rng.integers(lo, hi, n)
        zh_len = rng.integers(zlo, zhi, n)
        en_rows, en_tok = _token_matrix(en_len, hi, lambda s, pt=p_topic, ps=p_sub: english(s, pt, ps))
        zh_rows, zh_tok = _token_matrix(zh_len, zhi, chinese)
        en = _join_tokens(en_rows, en_tok.astype(str), " ", n)
        if col == "title":
            en = en.str.to_titlecase()
        zs = _join_tokens(zh_rows, zh_tok.astype(str), "", n)
        if col == "text":
            zs = zs + "。"
        mixed = pl.DataFrame({"zh": is_zh, "z": zs, "e": en})
        out[col] = mixed.select(pl.when("zh").then("z").otherwise("e"))["z"]

    frame = pl.DataFrame(
        {
            "title": out["title"],
            "text": out["text"],
            "category": pl.DataFrame(
                {
                    "a": np.array(topic_names, dtype=object)[topic].astype(str),
                    "b": sub_names[group].astype(str),
                }
            ).select(pl.concat_list("a", "b"))["a"],
            "language": pl.Series(np.where(is_zh, "zh", "en")).cast(pl.String),
        }
    )
    return frame, {"topic_names": topic_names, "subcategory_names": sub_names.tolist()}


def _make_items(cfg: SynthConfig, world: _World, rng: np.random.Generator) -> tuple[pl.DataFrame, dict]:
    text, notes = _make_text(cfg, world, rng)
    image_path = ("images/" + world.item_ids + ".png") if cfg.images else pl.Series([None] * cfg.items, dtype=pl.String)
    items = pl.DataFrame(
        {
            "item_id": world.item_ids,
            "title": text["title"],
            "text": text["text"],
            "category": text["category"],
            "image_path": image_path.cast(pl.String),
            "topic": pl.Series(world.item_topic, dtype=pl.Int32),
            "subcategory": pl.Series(world.item_sub, dtype=pl.Int32),
            "popularity_rank": pl.Series(world.item_rank, dtype=pl.Int32),
            "language": text["language"],
        }
    )
    return items, notes


def _make_users(cfg: SynthConfig, world: _World, rng: np.random.Generator) -> pl.DataFrame:
    """Users with attributes correlated with their home topic (so user towers can use them)."""
    n = cfg.users
    home = world.taste.argmax(axis=1)
    country = np.where(rng.random(n) < 0.5, home % len(_COUNTRIES), rng.integers(0, len(_COUNTRIES), n))
    age = np.where(rng.random(n) < 0.5, (home * 5) % len(_AGE_BANDS), rng.integers(0, len(_AGE_BANDS), n))
    return pl.DataFrame(
        {
            "user_id": world.user_ids,
            "age_band": pl.Series(np.array(_AGE_BANDS)[age]).cast(pl.String),
            "country": pl.Series(np.array(_COUNTRIES)[country]).cast(pl.String),
            "home_topic": pl.Series(home, dtype=pl.Int32),
            "taste": pl.Series(world.taste.astype(np.float32)).cast(pl.List(pl.Float32)),
        }
    )


# ---------------------------------------------------------------- images


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (each in [0, 1], shape [N]) -> RGB [N, 3] in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, axis=1) for c in [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]])
    return table[i, np.arange(len(h))]


def _shape_masks(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean masks [N, S, S] of shape id ``shape`` [N] at offsets dx, dy [N, S, S], size r [N, 1, 1]."""
    ax, ay, dist = np.abs(dx), np.abs(dy), np.hypot(dx, dy)
    masks = [
        dist < r,  # disc
        np.maximum(ax, ay) < 0.8 * r,  # square
        ax + ay < 1.1 * r,  # diamond
        (dist < r) & (dist > 0.55 * r),  # ring
        ((ax < 0.28 * r) & (ay < r)) | ((ay < 0.28 * r) & (ax < r)),  # cross
        (ay < 0.8 * r) & (ax < 0.55 * (dy + 0.8 * r)),  # triangle
        (np.maximum(ax, ay) < 0.85 * r) & (np.floor((dy + r) / (0.34 * r)) % 2 == 0),  # horizontal bars
        (np.maximum(ax, ay) < 0.85 * r) & (np.floor((dx + r) / (0.34 * r)) % 2 == 0),  # vertical bars
    ]
    return np.choose(shape[:, None, None], masks)


def _write_images(cfg: SynthConfig, world: _World, out: Path, rng: np.random.Generator, batch: int = 512) -> None:
    """``images/<item_id>.png``: shape by topic % 8, hue by topic, jittered, on a light gradient."""
    size, n, t = cfg.image_size, cfg.items, cfg.topics
    out.mkdir(parents=True, exist_ok=True)
    grid = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    ids = world.item_ids.to_list()
    for lo in range(0, n, batch):  # batches bound memory at [batch, S, S, 3]
        topic = world.item_topic[lo : lo + batch]
        m = len(topic)
        cx, cy = rng.normal(0, 0.1, (2, m, 1, 1)).clip(-0.25, 0.25)
        r = rng.uniform(0.5, 0.7, (m, 1, 1))
        mask = _shape_masks(topic % N_SHAPES, xx - cx, yy - cy, r)
        hue = (topic / t + rng.normal(0, 0.1 / t, m)) % 1.0
        # Topics that share a shape (t, t + 8, ...) also differ in saturation/value.
        band = (topic // N_SHAPES) % 3
        fg = _hsv_to_rgb(
            hue,
            np.clip(0.9 - 0.2 * band + rng.normal(0, 0.03, m), 0, 1),
            np.clip(0.9 - 0.15 * band + rng.normal(0, 0.03, m), 0, 1),
        )
        angle = rng.uniform(0, 2 * np.pi, (m, 1, 1))
        bg = rng.uniform(0.8, 0.95, (m, 1, 1)) + 0.06 * (np.cos(angle) * xx + np.sin(angle) * yy)
        img = np.where(mask[..., None], fg[:, None, None, :], bg[..., None])
        pixels = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        for k in range(m):  # PNG encoding is per image; images exist per item, not per event
            Image.fromarray(pixels[k]).save(out / f"{ids[lo + k]}.png", compress_level=6)


# ---------------------------------------------------------------- impressions


def _first_unique(cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``cand`` [N, M], the first ``k`` distinct values in order, and a validity mask."""
    order = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, order, axis=1)
    dup = np.zeros(cand.shape, dtype=bool)
    np.put_along_axis(dup, order[:, 1:], s[:, 1:] == s[:, :-1], axis=1)
    pick = np.argsort(dup, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, pick, axis=1), ~np.take_along_axis(dup, pick, axis=1)


def _make_impressions(
    cfg: SynthConfig, world: _World, item_count: np.ndarray, rng: np.random.Generator
) -> pl.DataFrame:
    """Impression logs (schema.IMPRESSIONS) after the events' period, with position-biased clicks."""
    n_logs, k = cfg.impressions, min(cfg.impression_size, cfg.items)
    users = _draw_users(world, n_logs, rng)
    m = 4 * k
    from_taste = rng.random((n_logs, m)) < 0.5
    cand = np.empty((n_logs, m), dtype=np.int64)
    rows = np.broadcast_to(users[:, None], (n_logs, m))[from_taste]
    cand[from_taste] = _draw(world.topic_sampler, _draw_topics(world, rows, rng), rng)
    popular = _ragged_sampler(np.zeros(cfg.items, dtype=np.int64), item_count + 1.0, 1)
    cand[~from_taste] = _draw(popular, np.zeros(int((~from_taste).sum()), dtype=np.int64), rng)
    shown, valid = _first_unique(cand, k)
    for row in np.flatnonzero(~valid.all(axis=1)):  # rare: tiny catalogues only
        have = shown[row][valid[row]]
        rest = rng.permutation(np.setdiff1d(np.arange(cfg.items), have))[: k - len(have)]
        shown[row] = np.concatenate([have, rest])

    pos = np.broadcast_to(np.arange(k), (n_logs, k))
    rel = world.taste[users[:, None], world.item_topic[shown]] / world.taste[users].max(axis=1)[:, None]
    p_click = np.minimum(1.0, 0.03 + 0.8 * rel / np.log2(pos + 2))
    clicked = rng.random((n_logs, k)) < p_click

    start_us = int((_start(cfg) + timedelta(days=cfg.days)).timestamp()) * 1_000_000
    span_us = max(1, cfg.days // 10) * 86_400 * 1_000_000
    ts = start_us + rng.integers(0, span_us, n_logs) // 1_000_000 * 1_000_000
    return pl.DataFrame(
        {
            "impression_id": _ids("m", n_logs).gather(np.repeat(np.arange(n_logs), k)),
            "user_id": world.user_ids.gather(np.repeat(users, k)),
            "ts": pl.Series(np.repeat(ts, k), dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "item_id": world.item_ids.gather(shown.ravel()),
            "position": pl.Series(pos.ravel(), dtype=pl.Int32),
            "clicked": pl.Series(clicked.ravel(), dtype=pl.Boolean),
        }
    )


# ---------------------------------------------------------------- entry point


def generate(cfg: SynthConfig, out_dir: Path) -> Path:
    """Write a synthetic prepared dataset to ``out_dir`` (replaced atomically) and return it.

    Files: ``events.parquet``, ``items.parquet`` (+ extra columns ``topic``,
    ``subcategory``, ``popularity_rank``: Int32 ground truth, ``language``),
    ``users.parquet`` (+ ``age_band``, ``country``, ``home_topic``, ``taste``:
    list[f32] of length ``topics``), ``impressions.parquet`` when
    ``cfg.impressions > 0``, ``images/<item_id>.png`` when ``cfg.images``, and
    ``dataset.json`` (name "synth", counts as ``Dataset.counts()``, sha256 of
    each table, the config, and ground-truth notes). Same config and seed ->
    identical files.
    """
    _check(cfg)
    out_dir = Path(out_dir)
    # Independent streams per part, so that e.g. turning images off leaves the events unchanged.
    world_rng, event_rng, text_rng, user_rng, image_rng, imp_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(6)
    )
    world = _make_world(cfg, world_rng)
    with atomic_dir(out_dir) as tmp:
        stats = _write_events(cfg, world, tmp / "events.parquet", event_rng)
        items, notes = _make_items(cfg, world, text_rng)
        tables = {"items": items, "users": _make_users(cfg, world, user_rng)}
        if cfg.impressions > 0:
            tables["impressions"] = _make_impressions(cfg, world, stats.item_count, imp_rng)
        for name, df in tables.items():
            schema.write_table(df, tmp / f"{name}.parquet", name)
        if cfg.images:
            _write_images(cfg, world, tmp / "images", image_rng)
        counts = {
            "events": stats.events,
            "users": stats.users,
            "items": cfg.items,
            "event_items": int((stats.item_count > 0).sum()),
            "sessions": stats.sessions,
        }
        if "impressions" in tables:
            imp = tables["impressions"]
            counts |= {
                "impressions": cfg.impressions,
                "impression_rows": imp.height,
                "clicks": int(imp["clicked"].sum()),
            }
        files = sorted(p.name for p in tmp.glob("*.parquet"))
        write_json(
            tmp / "dataset.json",
            {
                "name": "synth",
                "source": "synth",
                "counts": counts,
                "sha256": {f: sha256_file(tmp / f) for f in files},
                "config": config_to_dict(cfg),
                "ground_truth": _notes(cfg, world, notes),
                "recemb_version": __version__,
            },
        )
    return out_dir


def _notes(cfg: SynthConfig, world: _World, names: dict) -> dict:
    """What a model could learn, for the reader of dataset.json (see the module docstring)."""
    return {
        # The module docstring is the model's description (absent under python -OO).
        "model": (__doc__ or "see recemb/data/synth.py")
        .split("Generative model")[-1]
        .split("Events are generated")[0]
        .strip(" :\n"),
        "item_columns": {
            "topic": "Int32 topic index (ground truth)",
            "subcategory": "Int32 sub-category index within the topic",
            "popularity_rank": "Int32 rank within the topic (1 = most popular)",
            "category": "[topic name, sub-category name]",
        },
        "user_columns": {
            "home_topic": "argmax of taste",
            "taste": "Dirichlet topic mixture (list[f32])",
        },
        "topic_names": names["topic_names"],
        "subcategory_names": names["subcategory_names"],
        "topic_popularity": [round(float(x), 6) for x in world.topic_pop],
        "sub_focus": SUB_FOCUS,
        "purchase_weight": PURCHASE_WEIGHT,
        "image_shapes": [
            "disc",
            "square",
            "diamond",
            "ring",
            "cross",
            "triangle",
            "hbars",
            "vbars",
        ],
        "image_rule": "shape = topic % 8, hue = topic / topics, saturation/value band = topic // 8 % 3",
        "click_model": "p = min(1, 0.03 + 0.8 * taste[u, topic_i] / max(taste[u]) / log2(position + 2))",
        "impressions_start": (_start(cfg) + timedelta(days=cfg.days)).isoformat(),
        "seconds_per_event_gap": {"mean": MEAN_GAP_S, "max": MAX_GAP_S},
    }
