"""Batch candidate generation: top-k per user for every user, as a Ray Data job.

``generate_candidates(run_dir, events_path)`` reads the prepared events (user histories,
oldest first) and the run's exported indexes (``<run>/index/<model>/``) and
writes (DESIGN.md §5)::

    <run>/candidates/
      part-00000.parquet ...   user_id: string, rank: int32 (1-based),
                               item_id: string, score: float32, source: string
      _job.json                fingerprint of what the parts are made of
      manifest.json            counts, k, sources, seconds, users/s, config
      _SUCCESS                 written last: the set of parts is complete

Users go to a fixed partition, ``crc32(user_id) % partitions``, and are
sorted by id inside it, so partition ``p`` holds the same rows on every
run whatever the number of workers. Each partition is written by one call,
to a temp file renamed into place, so a part file exists only when it is
complete. A rerun with the same inputs skips the parts that exist: after a
crash it finishes the job, without duplicates. A rerun whose inputs differ
(other config, index, events) starts afresh.

Ray Data runs the partitions (one row = one whole partition, so a batch
never splits one) through :class:`PartitionWriter`, a callable class whose
``__init__`` opens the indexes (Annoy mmap, shared between workers by the
OS page cache) and builds the :class:`~recemb.retrieval.retriever.Retriever` once per
worker. ``num_workers=0`` runs the same class in this process, without Ray.

The queries come from a :data:`QueryBuilder`: :func:`production_queries`
(every user, history = all their events) unless the caller passes another.
An offline evaluation (``candidates.holdout`` = ``ml`` or ``sess``) passes
the builder of :mod:`recemb.eval.holdout_queries`, which hides that
protocol's test clicks, and scores the lists with :mod:`recemb.eval.candidates_eval`.

Popularity (the fallback for users no source can serve) counts the events
the histories come from (the builder's ``fit_events``: the train part under a holdout).
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recemb import __version__
from recemb.data import schema, splits
from recemb.data.repeats import resolve_exclude_seen
from recemb.errors import ConfigError, DataValidationError
from recemb.index.loading import manifest_kind
from recemb.io import atomic_path, sha256_file, write_json
from recemb.progress import Progress
from recemb.retrieval.candidates_config import CandidatesConfig
from recemb.retrieval.retriever import POPULARITY, Retriever
from recemb.retrieval.sources import USER_EMBEDDINGS, load_source
from recemb.retrieval.towers import check_batch
from recemb.testing import faults

log = logging.getLogger(__name__)

#: The Parquet schema of every part file (DESIGN.md §5); plain ``string``, not
#: ``large_string``/``string_view``, so that any Arrow reader takes it.
CANDIDATES_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("source", pa.string()),
    ]
)
PART_RE = re.compile(r"^part-(\d{5})\.parquet$")
JOB_FILE, MANIFEST_FILE, SUCCESS_FILE = "_job.json", "manifest.json", "_SUCCESS"
HOLDOUT_PREFIX = "_holdout-"  # <out>/_holdout-<source>/: a co-visitation table of the holdout's fit events
# Settings that change how fast the job runs, not what it writes.
_EXECUTION_KEYS = ("num_workers", "cpus_per_worker", "verify", "out")


# ----------------------------------------------------------------- queries
#: Builds a run's queries from the canonical events: ``events -> (queries, fit_events)``.
#: ``queries`` has one row per key: ``user_id: str, history: list[str] (oldest first),
#: exclude: list[str], target: str (null in production)``, sorted by ``user_id``;
#: popularity is counted on ``fit_events``.
QueryBuilder = Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]


def history_lists(events: pl.DataFrame) -> pl.DataFrame:
    """``[user_id, history: list[str]]``, oldest first by (ts, item_id) as P-ML orders them."""
    ev = events.select("user_id", "item_id", "ts")
    ev = ev.sort([pl.col("user_id"), *splits.sort_keys(ev, ("ts", "item_id"))], maintain_order=True)
    return ev.group_by("user_id", maintain_order=True).agg(history=pl.col("item_id"))


def production_queries(events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The production :data:`QueryBuilder`: every user, history = all their events, no target."""
    if events.height == 0:
        raise DataValidationError("candidate generation: the events table is empty; prepare data first")
    empty = pl.lit([], dtype=pl.List(pl.String))
    q = history_lists(events).with_columns(exclude=empty, target=pl.lit(None, pl.String))
    return q.sort("user_id"), events


def popularity(events: pl.DataFrame | pl.LazyFrame) -> list[str]:
    """Item ids by event count, most first; ties by id so every run agrees (the fallback of every list)."""
    counts = events.lazy().group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    return counts.collect()["item_id"].to_list()


def partition_of(keys: Iterable[str], partitions: int) -> np.ndarray:
    """``[Q]`` partition of each key: ``crc32(utf-8) % partitions``.

    crc32, not polars' ``hash``: it must give the same partition in every
    process and every library version, or a resumed job would write a user
    into two parts.
    """
    return np.fromiter((zlib.crc32(k.encode()) % partitions for k in keys), dtype=np.int64)


# ------------------------------------------------------------------ worker
@dataclass(frozen=True)
class SourceSpec:
    """Where one source's artifacts are; plain paths so that Ray can ship it."""

    name: str
    index_dir: str  # an Annoy index or a co-visitation directory
    users_dir: str | None = None


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a :class:`PartitionWriter` needs (picklable, no open files)."""

    sources: tuple[SourceSpec, ...]
    popularity: tuple[str, ...]
    out_dir: str
    k: int
    query: str
    last_n: int
    quotas: dict[str, int | float] | None
    weights: dict[str, float] | None
    exclude_seen: bool
    blocked: tuple[str, ...]
    search_k: int | None
    batch_size: int
    run_dir: str = ""
    user_tower: str = "none"  # a model whose tower encodes the histories for its own index


def part_path(out_dir: str | Path, part: int) -> Path:
    return Path(out_dir) / f"part-{part:05d}.parquet"


class PartitionWriter:
    """Ray Data callable class: ``pa.Table`` of whole partitions -> per-partition stats.

    Input rows: ``part: int64, user_id: list[str], history: list[list[str]],
    exclude: list[list[str]]``. For each row the partition's candidates go to
    ``part-<NNNNN>.parquet`` atomically. Output rows: ``part, users, rows,
    fallback_rows, seconds``.
    """

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        sources = {}
        for s in spec.sources:
            # The driver already verified checksums: here only the cheap structural checks.
            sources[s.name], _ = load_source(s.index_dir, verify=False, users=s.users_dir, search_k=spec.search_k)
        self.tower = None
        if spec.user_tower != "none":
            from recemb.retrieval.towers import load_user_tower

            self.tower = load_user_tower(spec.run_dir, None, spec.user_tower)
        self.retriever = Retriever(
            sources,
            popularity=list(spec.popularity),
            query=spec.query,
            last_n=spec.last_n,
            quotas=spec.quotas,
            exclude_seen=spec.exclude_seen,
            weights=spec.weights,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        stats = [self.write_partition(**row) for row in batch.to_pylist()]
        return pa.Table.from_pylist(stats)

    def candidates(self, user_ids: list[str], histories: list[list[str]], excludes: list[list[str]]) -> pa.Table:
        """Top-k for these users, in ``batch_size`` chunks, as a :data:`CANDIDATES_SCHEMA` table."""
        sp, frames = self.spec, []
        for lo in range(0, len(user_ids), sp.batch_size):
            hi = lo + sp.batch_size
            towers = None
            if self.tower is not None:
                users: list[str | None] = list(user_ids[lo:hi])
                towers = {
                    self.tower.source: check_batch(self.tower.encode(histories[lo:hi], users), len(users), "tower")
                }
            frames.append(
                self.retriever.recommend_batch(
                    histories[lo:hi],
                    sp.k,
                    exclude=excludes[lo:hi],
                    blocked=sp.blocked,
                    user_ids=user_ids[lo:hi],
                    query_vectors=towers,
                )
            )
        if not frames:
            return CANDIDATES_SCHEMA.empty_table()
        return pl.concat(frames).to_arrow().select(CANDIDATES_SCHEMA.names).cast(CANDIDATES_SCHEMA)

    def write_partition(self, part: int, user_id: list, history: list, exclude: list) -> dict[str, Any]:
        """Write one partition's part file atomically; return its stats."""
        t0 = time.perf_counter()
        table = self.candidates(user_id, history, exclude)
        faults.check("candidates.part", part=part)  # tests: a worker dying before the write
        with atomic_path(part_path(self.spec.out_dir, part)) as tmp:
            pq.write_table(table, tmp)
        fallback = int(pc.sum(pc.equal(table["source"], POPULARITY)).as_py() or 0)
        return {
            "part": part,
            "users": len(user_id),
            "rows": table.num_rows,
            "fallback_rows": fallback,
            "seconds": time.perf_counter() - t0,
        }


# ----------------------------------------------------------------- driver
def resolve_sources(run_dir: Path, c: CandidatesConfig) -> list[SourceSpec]:
    """The exported indexes to use, checked (sha256 with ``c.verify``) before any worker starts."""
    root = run_dir / "index"
    found = sorted(p.parent.name for p in root.glob("*/manifest.json"))
    wanted = c.sources or found
    if not wanted:
        raise ConfigError(f"candidates: no exported index under {root}; run `recemb export CONFIG` first")
    missing = [s for s in wanted if s not in found]
    if missing:
        raise ConfigError(
            f"candidates.sources: no index for {missing} under {root} (found {found or 'none'}); "
            "export them with `recemb export CONFIG` or fix the names"
        )
    for key in ("quotas", "weights"):
        unknown = sorted(set(getattr(c, key) or {}) - set(wanted))
        if unknown:
            raise ConfigError(f"candidates.{key} name unknown sources {unknown}; sources are {wanted}")
    specs = []
    for name in wanted:
        users = run_dir / name / USER_EMBEDDINGS
        users_dir = users if c.user_vectors and (users / "manifest.json").is_file() else None
        load_source(root / name, verify=c.verify, users=users_dir)  # every check, once, before any worker
        specs.append(SourceSpec(name, str(root / name), None if users_dir is None else str(users_dir)))
    return specs


def _checked_tower(run_dir: Path, c: CandidatesConfig, sources: list[SourceSpec]) -> str:
    """``c.user_tower`` when the run has that tower and its index is a source; else a ConfigError."""
    from recemb.retrieval.towers import find_user_tower

    if c.user_tower == "none":
        return "none"
    if c.user_tower not in {s.name for s in sources}:
        raise ConfigError(
            f"candidates.user_tower={c.user_tower}: its index is not among the sources {[s.name for s in sources]}; "
            "add it to candidates.sources or set user_tower: none"
        )
    if find_user_tower(run_dir, c.user_tower) is None:
        raise ConfigError(
            f"candidates.user_tower={c.user_tower}: {run_dir} has no saved tower; train it first "
            f"(`recemb train {c.user_tower.replace('_', '-')} CONFIG`)"
        )
    return c.user_tower


def _holdout_source(spec: SourceSpec, fit: pl.DataFrame, out: Path) -> SourceSpec:
    """A co-visitation source rebuilt from the holdout's fit events (same settings) in ``out``; others as they are."""
    from recemb.retrieval.covisit import CoVisitTable, read_manifest

    if manifest_kind(spec.index_dir) != "covisit":
        return spec
    m = read_manifest(spec.index_dir)
    table = CoVisitTable.build(fit, unit=m["unit"], top=m["top_m"], query=m["query"])
    rebuilt = out / f"{HOLDOUT_PREFIX}{spec.name}"
    table.save(rebuilt)
    return SourceSpec(spec.name, str(rebuilt), spec.users_dir)


def _fingerprint(c: CandidatesConfig, sources: list[SourceSpec], events_sha: str, n_keys: int) -> str:
    """What the parts are made of: if any of it changes, old parts are stale."""
    import hashlib

    from recemb.index.export import embeddings_dir

    files = {}
    for s in sources:
        for d in (s.index_dir, s.users_dir):
            if d:
                files[d] = json.loads((Path(d) / "manifest.json").read_text()).get("sha256")
        if manifest_kind(s.index_dir) != "covisit":  # the vectors behind the index
            d = str(embeddings_dir(s.index_dir))
            files[d] = json.loads((Path(d) / "manifest.json").read_text()).get("sha256")
    blob = {
        "config": c.model_dump(mode="json", exclude=set(_EXECUTION_KEYS)),
        "sources": [asdict(s) for s in sources],
        "files": files,
        "events": events_sha,
        "keys": n_keys,
        "code_version": __version__,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _prepare_out(out: Path, fingerprint: str, force: bool, say: Callable[[str], None]) -> bool:
    """Make ``out`` hold only parts of this fingerprint; True if the job is already complete."""
    job = out / JOB_FILE
    old = json.loads(job.read_text()).get("fingerprint") if job.is_file() else None
    if old == fingerprint and not force:
        if (out / SUCCESS_FILE).is_file():
            return True
    elif out.exists():
        stale = [p for p in out.iterdir() if PART_RE.match(p.name)]
        if stale:
            say(f"candidates: {out} holds {len(stale)} parts of other inputs; starting afresh")
        for p in [*stale, out / MANIFEST_FILE, out / SUCCESS_FILE]:
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # Temp files of a killed worker: never renamed, so never part of the output.
    for p in out.glob(".part-*.tmp"):
        p.unlink(missing_ok=True)
    (out / SUCCESS_FILE).unlink(missing_ok=True)
    write_json(job, {"fingerprint": fingerprint})
    return False


def _partition_table(queries: pl.DataFrame, parts: np.ndarray, todo: list[int]) -> pa.Table:
    """One row per partition in ``todo``: its users (sorted), histories and exclusions."""
    grouped = (
        queries.with_columns(part=pl.Series(parts))
        .filter(pl.col("part").is_in(todo))
        .sort(["part", "user_id"])
        .group_by("part", maintain_order=True)
        .agg("user_id", "history", "exclude")
    )
    # Partitions with no user still get a (empty) part file, so "done" = "file exists".
    missing = sorted(set(todo) - set(grouped["part"].to_list()))
    if missing:
        empty = pl.DataFrame(
            {
                "part": missing,
                "user_id": [[]] * len(missing),
                "history": [[]] * len(missing),
                "exclude": [[]] * len(missing),
            },
            schema=grouped.schema,
        )
        grouped = pl.concat([grouped, empty]).sort("part")
    return grouped.to_arrow(compat_level=pl.CompatLevel.oldest())


def _run_partitions(table: pa.Table, spec: WorkerSpec, c: CandidatesConfig, on_done: Callable[[dict], None]) -> None:
    if c.num_workers == 0:
        writer = PartitionWriter(spec)
        for i in range(table.num_rows):
            for row in writer(table.slice(i, 1)).to_pylist():
                on_done(row)
        return
    import ray.data

    from recemb.ray_runtime import ray_session

    with ray_session():
        # One block per partition: a block is never split between two writes.
        blocks = ray.data.from_arrow([table.slice(i, 1) for i in range(table.num_rows)])
        # A running Ray does not see variables set after it started: hand on the fault rules.
        remote_args: dict[str, Any] = {"runtime_env": {"env_vars": faults.env()}} if faults.env() else {}
        ds = blocks.map_batches(
            PartitionWriter,
            fn_constructor_kwargs={"spec": spec},
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=c.num_workers),
            num_cpus=c.cpus_per_worker,
            **remote_args,
        )
        for row in ds.iter_rows():
            on_done(dict(row))


def generate_candidates(
    run_dir: str | Path,
    events_path: str | Path,
    section: CandidatesConfig | None = None,
    *,
    queries: QueryBuilder = production_queries,
    force: bool = False,
    log_fn: Callable[[str], None] | None = None,
) -> Path:
    """Write top-k candidates for every query key to ``<run>/candidates``; return that dir.

    Args:
        run_dir: the run directory (``<run>/index/<model>/`` are the sources).
        events_path: the prepared ``events.parquet``.
        section: the candidates settings; default :class:`CandidatesConfig` ().
        queries: builds the queries from the events; ``section.holdout`` other
            than ``none`` needs the matching builder of
            :func:`recemb.eval.holdout_queries.query_builder`.
        force: recompute every partition even if the output is complete.
        log_fn: receives progress lines (default: this module's logger).
    """
    say = log_fn or log.info
    c = section or CandidatesConfig()
    if c.holdout != "none" and queries is production_queries:
        raise ConfigError(
            f"candidates.holdout={c.holdout} needs its holdout queries: pass "
            f"queries=recemb.eval.holdout_queries.query_builder({c.holdout!r}, gap_minutes)"
        )
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    out = Path(c.out) if c.out else run_dir / "candidates"
    sources = resolve_sources(run_dir, c)
    events_path = Path(events_path)
    if not events_path.is_file():
        raise DataValidationError(
            f"{events_path}: missing; prepare the data first (`recemb data prepare` or `recemb pipeline CONFIG`)"
        )
    events = schema.read_table(events_path, "events")
    keys, fit = queries(events)
    if c.holdout != "none":  # co-visitation counted on all events would have seen the held-out clicks
        sources = [_holdout_source(s, fit, out) for s in sources]
    parts = partition_of(keys["user_id"].to_list(), c.partitions)
    fingerprint = _fingerprint(c, sources, sha256_file(events_path), keys.height)
    if _prepare_out(out, fingerprint, force, say):
        say(f"candidates: {out} is complete for these inputs; nothing to do (force to redo)")
        return out

    done = sorted(int(m.group(1)) for p in out.iterdir() if (m := PART_RE.match(p.name)))
    todo = [p for p in range(c.partitions) if p not in set(done)]
    if done:
        say(f"candidates: resuming, {len(done)}/{c.partitions} partitions already written")
    spec = WorkerSpec(
        sources=tuple(sources),
        popularity=tuple(popularity(fit)),
        out_dir=str(out),
        k=c.k,
        query=c.query,
        last_n=c.last_n,
        quotas=c.quotas,
        weights=c.weights,
        exclude_seen=c.holdout != "sess" and resolve_exclude_seen(c.exclude_seen, fit),  # P-SESS masks nothing
        blocked=tuple(c.blocked),
        search_k=c.search_k,
        batch_size=c.batch_size,
        run_dir=str(run_dir),
        user_tower=_checked_tower(run_dir, c, sources),
    )
    progress = {"parts": len(done), "users": 0, "fallback_rows": 0}
    t_run = time.perf_counter()
    bar = Progress("candidates", len(todo), "partition")

    def on_done(row: dict) -> None:
        progress["parts"] += 1
        progress["users"] += int(row["users"])
        progress["fallback_rows"] += int(row["fallback_rows"])
        rate = progress["users"] / max(time.perf_counter() - t_run, 1e-9)
        bar.update(1, users=progress["users"], users_per_s=round(rate))
        (log_fn or bar.note)(
            f"candidates: {progress['parts']}/{c.partitions} partitions, {progress['users']} users, {rate:,.0f} users/s"
        )

    with bar:
        if todo:
            _run_partitions(_partition_table(keys, parts, todo), spec, c, on_done)
        bar.summary = f"{progress['users']} users"
    run_seconds = time.perf_counter() - t_run
    manifest = _manifest(out, c, sources, keys.height, len(done), progress, t0, run_seconds, fingerprint)
    manifest["exclude_seen"] = spec.exclude_seen  # as resolved ("auto" -> the data's repeat share)
    write_json(out / MANIFEST_FILE, manifest)
    with atomic_path(out / SUCCESS_FILE) as tmp:
        tmp.write_text("")
    say(f"candidates: {manifest['rows']} rows for {manifest['users']} users in {manifest['seconds']}s -> {out}")
    return out


def _manifest(out, c, sources, n_users, resumed, progress, t0, run_seconds, fingerprint) -> dict[str, Any]:
    files = sorted(p for p in out.iterdir() if PART_RE.match(p.name))
    if len(files) != c.partitions:  # cannot happen unless someone deletes files mid-run
        raise DataValidationError(f"{out}: {len(files)} part files, expected {c.partitions}; rerun the job")
    rows = sum(pq.read_metadata(p).num_rows for p in files)
    return {
        "schema_version": 1,
        "users": n_users,
        "rows": rows,
        "k": c.k,
        "holdout": c.holdout,
        "sources": [s.name for s in sources],
        "partitions": c.partitions,
        "resumed_partitions": resumed,
        "this_run": {
            "users": progress["users"],
            "fallback_rows": progress["fallback_rows"],
            "seconds": round(run_seconds, 3),
            "users_per_s": round(progress["users"] / run_seconds, 1) if run_seconds > 0 else None,
        },
        "seconds": round(time.perf_counter() - t0, 3),
        "columns": {f.name: str(f.type) for f in CANDIDATES_SCHEMA},
        "config": c.model_dump(mode="json"),
        "fingerprint": fingerprint,
        "code_version": __version__,
    }


def read_candidates(out_dir: str | Path) -> pl.DataFrame:
    """All parts of a finished candidate run as one frame (raises unless ``_SUCCESS`` is there)."""
    out = Path(out_dir)
    if not (out / SUCCESS_FILE).is_file():
        raise DataValidationError(
            f"{out}: no {SUCCESS_FILE}; the candidate job has not finished. "
            "Rerun `recemb candidates CONFIG` (it resumes where it stopped)"
        )
    return pl.read_parquet(sorted(str(p) for p in out.iterdir() if PART_RE.match(p.name)))


__all__ = [
    "CANDIDATES_SCHEMA",
    "CandidatesConfig",
    "PartitionWriter",
    "QueryBuilder",
    "generate_candidates",
    "history_lists",
    "partition_of",
    "popularity",
    "production_queries",
    "read_candidates",
]
