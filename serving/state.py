"""What the service has loaded, and the index hot swap.

A :class:`Snapshot` is immutable: the Retriever over every ``<run>/index/<name>/``
(Annoy indexes with their vectors, or a co-visitation table; each checked by
:func:`recemb.retrieval.sources.load_source`), the popularity fallback, the user tower and the
manifests. A request takes ``state.current()`` ONCE and uses that snapshot to
the end, so a swap never changes the index under a running request.

:meth:`ServingState.reload` builds a whole new snapshot off the request path,
checks it (manifests, checksums, ids against the EmbeddingSet, one query per
source) and only then replaces the reference (one assignment, under a lock
that serialises reloads). A bad export raises while loading and is refused:
the old snapshot keeps serving and ``last_error`` says why. The old Annoy
mmaps close when the last request holding the old snapshot lets go of it
(reference counting), never under a running search; ``recemb export``
replaces index directories by rename, so the old files stay readable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recemb.data.repeats import resolve_exclude_seen
from recemb.errors import RecembError
from recemb.index.base import RecembIndexError
from recemb.index.export import MANIFEST_FILE
from recemb.retrieval.candidates import popularity
from recemb.retrieval.retriever import Retriever
from recemb.retrieval.serve_config import ServeConfig
from recemb.retrieval.sources import EmbeddingSource, load_source
from serving.user_tower import MicroBatcher, TowerQueryFn, UserTowerQuery, load_user_tower

log = logging.getLogger(__name__)


class NotReady(RecembError):
    """No index has been loaded yet (readiness fails)."""


@dataclass(frozen=True)
class Snapshot:
    """One loaded generation of indexes; never mutated after it is built."""

    generation: int
    loaded_at: float  # unix seconds
    retriever: Retriever
    manifests: dict[str, dict[str, Any]]  # model -> index manifest
    popularity_items: int
    tower: UserTowerQuery | None = None
    tower_query: TowerQueryFn | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``/v1/indexes``."""
        return {
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "models": {
                name: {
                    "kind": m["kind"],
                    "count": m["count"],
                    "dim": m.get("dim"),
                    "metric": m.get("metric"),
                    "sha256": m["sha256"],
                    "user_vectors": getattr(self.retriever.sources[name], "users", None) is not None,
                    "manifest": m,
                }
                for name, m in self.manifests.items()
            },
            "popularity_items": self.popularity_items,
            "user_tower": None if self.tower is None else self.tower.source,
        }


@dataclass
class ReloadResult:
    ok: bool
    generation: int  # the generation serving after the attempt
    error: str | None = None
    seconds: float = 0.0
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "generation": self.generation,
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "at": self.at,
        }


def index_names(settings: ServeConfig) -> list[str]:
    """The models to serve: ``settings.models`` or every ``<run>/index/*/manifest.json``."""
    root = settings.run_path / "index"
    if settings.models:
        return list(settings.models)
    names = sorted(p.parent.name for p in root.glob(f"*/{MANIFEST_FILE}")) if root.is_dir() else []
    if not names:
        raise RecembIndexError(
            f"{root}: no exported index (<run>/index/<model>/manifest.json); run `recemb export CONFIG`"
        )
    return names


def scan_events(prepared_dir: Path) -> pl.LazyFrame:
    """The prepared events, lazily (the popularity fallback and the repeat share read them); empty if missing."""
    events = prepared_dir / "events.parquet"
    if not events.is_file():
        log.warning("%s missing: the popularity fallback is empty", events)
        return pl.LazyFrame(schema={"user_id": pl.String, "item_id": pl.String})
    return pl.scan_parquet(events)


def load_snapshot(
    settings: ServeConfig,
    generation: int,
    tower_query_factory: Callable[[UserTowerQuery], TowerQueryFn] | None = None,
) -> Snapshot:
    """Load and check everything the service answers from; raises RecembError on any bad artifact."""
    sources, manifests = {}, {}
    for name in index_names(settings):
        sources[name], manifests[name] = load_source(settings.run_path / "index" / name, settings.verify_checksums)
    events = scan_events(settings.prepared_path)
    fallback = popularity(events)
    retriever = Retriever(
        sources,
        popularity=fallback,
        query=settings.query,
        last_n=settings.last_n,
        quotas=settings.quotas,
        exclude_seen=resolve_exclude_seen(settings.exclude_seen, events),
        weights=settings.weights,
    )
    for name, src in sources.items():  # one real search per index before it may serve
        if isinstance(src, EmbeddingSource) and src.index.search(src.items.vectors[:1], 1)[0][0, 0] < 0:
            raise RecembIndexError(f"index {name!r} returned nothing for its own first item; re-export it")
    tower, tower_query = None, None
    if settings.user_tower.enabled:
        tower = load_user_tower(settings.run_path, settings.user_tower.source, settings.user_tower.model)
        if tower is not None:
            if tower.source not in sources:
                raise RecembIndexError(
                    f"the user tower queries index {tower.source!r}, which is not loaded "
                    f"(loaded: {sorted(sources)}); export it or add it to serve.models"
                )
            factory = tower_query_factory or (
                lambda t: MicroBatcher(t, settings.user_tower.max_batch_size, settings.user_tower.batch_wait_ms)
            )
            tower_query = factory(tower)
    return Snapshot(generation, time.time(), retriever, manifests, len(fallback), tower, tower_query)


class ServingState:
    """The current snapshot plus hot swap.

    Args:
        settings: the resolved ``serve`` section (``run_dir`` set).
        loader: ``(settings, generation) -> Snapshot`` (tests inject failures here).
    """

    def __init__(
        self,
        settings: ServeConfig,
        loader: Callable[[ServeConfig, int], Snapshot] | None = None,
        tower_query_factory: Callable[[UserTowerQuery], TowerQueryFn] | None = None,
    ):
        self.settings = settings
        self._loader = loader or (lambda s, g: load_snapshot(s, g, tower_query_factory))
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()  # one reload at a time
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="recemb-reload")
        self.last_reload: ReloadResult | None = None
        self.reloads = {"ok": 0, "refused": 0}

    def current(self) -> Snapshot:
        """The snapshot to answer one request from (take it once per request)."""
        snap = self._snapshot
        if snap is None:
            raise NotReady("no index loaded yet; see /v1/indexes for the last load error")
        return snap

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    def reload(self) -> ReloadResult:
        """Load a new snapshot and swap it in; on any error keep the old one. Blocking."""
        with self._lock:
            gen = (self._snapshot.generation if self._snapshot else 0) + 1
            t0 = time.perf_counter()
            try:
                snap = self._loader(self.settings, gen)
            except (RecembError, OSError, ValueError) as e:
                serving = self._snapshot.generation if self._snapshot else 0
                result = ReloadResult(False, serving, f"{type(e).__name__}: {e}", time.perf_counter() - t0)
                self.reloads["refused"] += 1
                log.error("index reload refused, generation %s keeps serving: %s", serving, e)
            else:
                self._snapshot = snap  # the swap: one reference assignment
                result = ReloadResult(True, gen, None, time.perf_counter() - t0)
                self.reloads["ok"] += 1
                log.info("index generation %s serving (%s)", gen, ", ".join(snap.manifests))
            self.last_reload = result
            return result

    def reload_in_background(self) -> Future:
        """Start :meth:`reload` on the reload thread; the Future yields the ReloadResult."""
        return self._pool.submit(self.reload)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
