"""Export an EmbeddingSet to an Annoy index directory, and load one safely.

An index directory (DESIGN.md §5, ``<run>/index/<model>/``) holds::

    items.ann       the Annoy forest; Annoy item i = EmbeddingSet row i
    manifest.json   schema_version, kind="annoy", dim, metric, annoy_metric,
                    n_trees, count, node_bytes, file_bytes, sha256{items.ann},
                    search_k, seed, recall_at_10 (vs exact, on a sample of the
                    items' own vectors as queries), recall_sample,
                    build_seconds, embeddings{path, kind, count, dim, sha256},
                    annoy_version, code_version

Annoy files carry no metadata and Annoy segfaults on a wrong dimension or
metric, so :func:`load_index` checks the manifest and the file's structure
(size is a whole number of nodes of that dim and metric, item and root nodes
where they must be, optional sha256) BEFORE ``AnnoyIndex.load`` mmaps it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from recemb import __version__
from recemb.embeddings import MANIFEST_FILE as EMB_MANIFEST
from recemb.embeddings import EmbeddingSet
from recemb.index.annoy_index import ANNOY_METRIC, AnnoyIndex, node_bytes
from recemb.index.base import RecallBelowTarget, RecembIndexError
from recemb.index.exact import ExactIndex
from recemb.io import atomic_dir, read_checked_manifest, read_json_object, sha256_file, write_json
from recemb.vectors import METRICS

SCHEMA_VERSION = 1
INDEX_FILE = "items.ann"
MANIFEST_FILE = "manifest.json"
_FIX = "re-export with `recemb export CONFIG`"
# Above this many items the forest is built straight into the file (no RAM copy).
ON_DISK_MIN_ITEMS = 1_000_000


def package_version(name: str) -> str:
    """The installed version of a package, recorded in manifests ("unknown" for a source checkout)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # pragma: no cover - built from a checkout
        return "unknown"


def export_index(
    embset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_trees: int = 50,
    metric: str | None = None,
    sample: int = 1000,
    seed: int = 0,
    search_k: int = -1,
    n_jobs: int = -1,
    on_disk: bool | None = None,
    recall_target: float | None = None,
    accept_lower_recall: bool = False,
) -> dict[str, Any]:
    """Build ``out_dir/items.ann`` + ``manifest.json`` from an EmbeddingSet, atomically.

    Args:
        embset_dir: an EmbeddingSet directory (verified on load).
        out_dir: the index directory; an old index there is replaced whole,
            only once the new one is complete.
        n_trees: Annoy trees.
        metric: cosine, dot or euclidean; default = the EmbeddingSet's metric.
        sample: items whose own vectors are the queries for recall@10 vs
            exact search (0 skips the measurement).
        seed: seeds Annoy's forest and the sample.
        search_k: the search_k recorded as the default for loading and used
            for the recall measurement (-1 = Annoy's n_trees * k).
        n_jobs: build threads (-1 = all cores).
        on_disk: build into the file instead of RAM; default for >= 1M items.
        recall_target: certify recall@10 against exact search on held-out queries
            (:func:`certify_recall`): the cheapest ``search_k_factor`` that meets it is
            recorded and used by every load; None skips it.
        accept_lower_recall: when no setting meets ``recall_target``, record the best one
            instead of refusing the export.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    embset_dir, out_dir = Path(embset_dir), Path(out_dir)
    emb, metric = load_for_export(embset_dir, metric)
    on_disk = len(emb) >= ON_DISK_MIN_ITEMS if on_disk is None else on_disk

    with atomic_dir(out_dir) as tmp:
        ann_path = tmp / INDEX_FILE
        index = AnnoyIndex(metric=metric, n_trees=n_trees, search_k=search_k, n_jobs=n_jobs, seed=seed)
        t0 = time.perf_counter()
        index.build(emb.vectors, on_disk=ann_path if on_disk else None)
        if not on_disk:
            index.save(ann_path)
        build_seconds = time.perf_counter() - t0
        certified = None
        if recall_target is not None:
            certified = certify_recall(index, emb.vectors, recall_target, seed=seed, fixed=search_k != -1)
            if not certified["met"] and not accept_lower_recall:
                raise RecallBelowTarget(
                    f"{out_dir}: Annoy with {n_trees} trees reaches recall@10 {certified['recall']:.3f} on held-out "
                    f"queries at best (search_k {certified['search_k']}), below export.recall_target "
                    f"{recall_target}; raise export.n_trees, or set export.accept_lower_recall: true; "
                    "the previous index (if any) is unchanged",
                    certified,
                )
            index.search_k_factor = certified["search_k_factor"]
        recall = measure_recall(index, emb.vectors, sample=sample, k=10, seed=seed) if sample else None
        index.unload()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": "annoy",
            "dim": emb.dim,
            "count": len(emb),
            "metric": metric,
            "annoy_metric": ANNOY_METRIC[metric],
            "n_trees": int(n_trees),
            "search_k": int(search_k),
            "seed": int(seed),
            "node_bytes": node_bytes(ANNOY_METRIC[metric], emb.dim),
            "file_bytes": ann_path.stat().st_size,
            "sha256": {INDEX_FILE: sha256_file(ann_path)},
            "search_k_factor": index.search_k_factor,
            "certified": certified,
            "recall_at_10": recall,
            "recall_sample": min(sample, len(emb)) if sample else 0,
            "build_seconds": round(build_seconds, 3),
            "embeddings": embeddings_record(embset_dir, out_dir, emb),
            "annoy_version": package_version("annoy"),
            "code_version": __version__,
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def load_for_export(embset_dir: Path, metric: str | None) -> tuple[EmbeddingSet, str]:
    """The (verified, non-empty) EmbeddingSet to index and the metric to index it with."""
    emb = EmbeddingSet.load(embset_dir)
    metric = metric or emb.metric
    if metric not in METRICS:
        raise RecembIndexError(f"metric must be one of {METRICS}, got {metric!r}")
    if len(emb) == 0:
        raise RecembIndexError(f"{embset_dir}: the EmbeddingSet is empty; nothing to index")
    return emb, metric


def measure_recall(index, vectors: np.ndarray, sample: int = 1000, k: int = 10, seed: int = 0) -> float:
    """Mean recall@k of ``index`` against exact search, on ``sample`` rows of ``vectors [N, D]`` as queries.

    recall@k = |approx top-k ∩ exact top-k| / k (rows, not scores, so ties
    at the k-th score can cost a little recall).
    """
    n = vectors.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    queries = np.asarray(vectors[rows], dtype=np.float32)
    kk = min(k, n)
    exact_rows, _ = ExactIndex(index.metric).build(vectors).search(queries, kk)
    approx_rows, _ = index.search(queries, kk)
    hits = (approx_rows[:, :, None] == exact_rows[:, None, :]).any(axis=2).sum(axis=1)
    return round(float(hits.mean() / kk), 4)


#: search_k_factor values tried in turn by :func:`certify_recall` (x n_trees x k nodes per query).
CERTIFY_FACTORS = (1, 2, 4, 8, 16, 32, 64)


def held_out_queries(
    vectors: np.ndarray, n: int, seed: int = 0, per_query: int = 3, metric: str = "cosine"
) -> np.ndarray:
    """``[n, D]`` queries that are not rows of the index: histories of related items, pooled.

    Each query is the mean of ``per_query`` unit rows: a random row and ``per_query - 1`` of its
    ``3 * per_query`` nearest neighbours (exact, by ``metric``), as a user's recent items are
    related and a pooled history query (recemb.pooling) lands among them. An item's own vector
    would find itself first and flatter the index; a mean of unrelated random rows lands where
    every item scores nearly alike, where recall means little (the top-k are tied within
    rounding) and no index, exact included, retrieves anything useful.
    """
    rng = np.random.default_rng(seed + 1)
    seeds = rng.integers(0, vectors.shape[0], size=n)
    first = np.asarray(vectors[seeds], dtype=np.float32)
    width = min(3 * per_query + 1, vectors.shape[0])
    near, _ = ExactIndex(metric).build(vectors).search(first, width)
    picks = [seeds[:, None]]
    if per_query > 1 and width > 1:  # ranks 1.. (rank 0 is usually the row itself)
        cols = np.argsort(rng.random((n, width - 1)), axis=1)[:, : per_query - 1] + 1
        picks.append(np.take_along_axis(near, cols, axis=1))
    rows = np.concatenate(picks, axis=1)
    rows = np.where(rows >= 0, rows, seeds[:, None])
    x = np.asarray(vectors[rows.ravel()], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = (x / np.where(norms > 0, norms, 1.0)).reshape(n, rows.shape[1], -1)
    return unit.mean(axis=1).astype(np.float32)


class HeldOutRecall:
    """recall@k of any index against exact search on :func:`held_out_queries` (exact top-k computed once).

    A hit is a result scoring at least the exact k-th score: items tied with it are as good
    (identical vectors are common: one-hot or category vectors), whichever of them is returned.
    """

    def __init__(self, vectors: np.ndarray, metric: str, k: int = 10, queries: int = 1000, seed: int = 0):
        self.queries = held_out_queries(vectors, min(queries, max(1, vectors.shape[0])), seed, metric=metric)
        self.k = min(k, vectors.shape[0])
        exact = ExactIndex(metric).build(vectors)
        _, exact_scores = exact.search(self.queries, self.k)
        self.kth = exact_scores[:, self.k - 1 : self.k]
        self.tol = 1e-4 * np.maximum(1.0, np.abs(self.kth))
        # Exact search one query at a time (as an ANN index answers them): what an index must beat.
        sample = self.queries[:200]
        seconds = best_seconds(lambda: [exact.search(q, self.k) for q in sample])
        self.exact_queries_per_s = round(len(sample) / max(seconds, 1e-9), 1)

    def __call__(self, index: Any) -> tuple[float, float]:
        """``(recall@k, seconds of the search)``."""
        found: list[tuple[np.ndarray, np.ndarray]] = []
        seconds = best_seconds(lambda: found.append(index.search(self.queries, self.k)))
        rows, scores = found[0]
        hits = ((rows >= 0) & (scores >= self.kth - self.tol)).sum(axis=1)
        return round(float(hits.mean() / self.k), 4), seconds


TIMING_REPEATS = 3


def best_seconds(work: Any, repeats: int = TIMING_REPEATS) -> float:
    """The fastest of ``repeats`` runs of ``work()``: one run of a few milliseconds is easily
    stretched by another process on a busy machine, and the exact-vs-index choice compares two."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
    return best


def certify_recall(
    index: Any,
    vectors: np.ndarray,
    target: float,
    k: int = 10,
    queries: int = 1000,
    seed: int = 0,
    fixed: bool = False,
    knob: str = "search_k_factor",
) -> dict[str, Any]:
    """The cheapest setting of ``index.<knob>`` whose recall@k against exact search on held-out
    queries meets ``target`` (Annoy's ``search_k_factor``, HNSW's ``ef_factor``).

    recall@k = share of the returned k that score at least the exact k-th score (ties count).

    Tries :data:`CERTIFY_FACTORS` in turn (only the index's own setting when ``fixed``: a
    search_k set by hand) and returns ``{"target", "k", "queries", "met", <knob>, **effort,
    "recall", "queries_per_s", "exact_queries_per_s", "sweep": [{<knob>, **effort, "recall",
    "queries_per_s"}]}``, where ``effort`` is ``index.effort(k)`` (e.g. ``search_k`` or ``ef``);
    when none meets the target, the best one tried. Queries/s count one query at a time (one
    thread), for the index and for exact search alike.
    """
    measure = HeldOutRecall(vectors, index.metric, k, queries, seed)
    sweep = []
    for factor in (getattr(index, knob),) if fixed else CERTIFY_FACTORS:
        setattr(index, knob, float(factor))
        recall, seconds = measure(index)
        sweep.append(
            {
                knob: float(factor),
                **index.effort(measure.k),
                "recall": recall,
                "queries_per_s": round(len(measure.queries) / max(seconds, 1e-9), 1),
            }
        )
        if recall >= target:
            break
    best = next((r for r in sweep if r["recall"] >= target), max(sweep, key=lambda r: r["recall"]))
    return {
        "target": target,
        "k": measure.k,
        "queries": len(measure.queries),
        "met": best["recall"] >= target,
        **best,
        "exact_queries_per_s": measure.exact_queries_per_s,
        "sweep": sweep,
    }


def slower_than_exact(manifest: dict[str, Any], margin: float = 1.0) -> float | None:
    """How many times faster exact search answers than this certified approximate index, when it
    is at least ``margin`` times faster (one query at a time, on the certification's queries);
    None otherwise."""
    c = manifest.get("certified") or {}
    ann, exact = c.get("queries_per_s"), c.get("exact_queries_per_s")
    if not ann or not exact or exact < margin * ann or exact <= ann:
        return None
    return float(exact / ann)


def describe(manifest: dict[str, Any]) -> str:
    """One line for the export stage's log."""
    recall = "n/a" if manifest.get("recall_at_10") is None else f"{manifest['recall_at_10']:.3f}"
    c, cert = manifest.get("certified"), ""
    if c:
        below = "" if c["met"] else f" (BELOW the target {c['target']}, accepted)"
        cert = f", held-out recall@10 {c['recall']:.3f} at {c['search_k_factor']:g} x n_trees x k{below}"
    return f"{manifest['metric']}, Annoy {manifest['n_trees']} trees, recall@10 vs exact {recall}{cert}"


# --------------------------------------------------------------------- loading
#: Keys every single-file index manifest (Annoy, HNSW) holds, with their types.
FILE_INDEX_REQUIRED: dict[str, type] = {
    "schema_version": int,
    "kind": str,
    "dim": int,
    "count": int,
    "metric": str,
    "file_bytes": int,
    "sha256": dict,
}
_REQUIRED = {**FILE_INDEX_REQUIRED, "n_trees": int}


def check_index_file(
    path: Path, manifest: dict[str, Any], verify: bool, structure: Callable[[Path], None], fix: str = _FIX
) -> None:
    """Check an index file against its manifest before a library maps it: present, of the
    recorded size, of the right ``structure`` (a callable raising on a foreign or damaged
    file) and, with ``verify``, of the recorded sha256."""
    if not path.is_file():
        raise RecembIndexError(f"{path}: missing; {fix}")
    size = path.stat().st_size
    if size != manifest["file_bytes"]:
        raise RecembIndexError(
            f"{path}: {size} bytes but {MANIFEST_FILE} says {manifest['file_bytes']}; the file is truncated or was "
            f"replaced after export; {fix}"
        )
    structure(path)
    if verify:
        want, got = manifest["sha256"].get(path.name), sha256_file(path)
        if want != got:
            raise RecembIndexError(
                f"{path}: sha256 {got[:12]}... does not match {MANIFEST_FILE} ({str(want)[:12]}...); the file "
                f"was changed after export; {fix}"
            )


def read_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``index_dir/manifest.json``; raises :class:`RecembIndexError` naming the fix."""
    path = Path(index_dir) / MANIFEST_FILE
    if not Path(index_dir).is_dir():
        raise RecembIndexError(f"{index_dir}: no such index directory; {_FIX}")
    if not path.is_file():
        raise RecembIndexError(f"{path}: missing (an index directory holds {INDEX_FILE} and {MANIFEST_FILE}); {_FIX}")
    m = read_checked_manifest(
        path, RecembIndexError, _FIX, schema_version=SCHEMA_VERSION, required=_REQUIRED, oldest=SCHEMA_VERSION
    )
    if m["kind"] != "annoy":
        raise RecembIndexError(f"{path}: kind {m['kind']!r} is not 'annoy'; {_FIX}")
    if m.get("annoy_metric", ANNOY_METRIC[m["metric"]]) != ANNOY_METRIC[m["metric"]]:
        raise RecembIndexError(
            f"{path}: metric {m['metric']!r} needs Annoy metric {ANNOY_METRIC[m['metric']]!r} but the manifest says "
            f"{m['annoy_metric']!r}; the manifest was edited or mixed up; {_FIX}"
        )
    if m["dim"] < 1 or m["count"] < 1 or m["n_trees"] < 1:
        raise RecembIndexError(f"{path}: dim, count and n_trees must be >= 1; {_FIX}")
    return m


def check_annoy_file(path: str | os.PathLike, dim: int, count: int, metric: str, n_trees: int) -> None:
    """Check that ``path`` is an Annoy forest of ``count`` items of ``dim`` and ``metric`` without loading it.

    Annoy's file is an array of fixed-size nodes: items ``0..count-1`` first
    (``n_descendants == 1``), split nodes next, and the tree roots last
    (``n_descendants == count``, one per tree). A wrong dim or metric changes
    the node size, which moves every one of those fields. Reads only the
    first items, a sample of the rest and the tail, so it costs microseconds
    even on a multi-GB file.
    """
    path = Path(path)
    if not path.is_file():
        raise RecembIndexError(f"{path}: missing; {_FIX}")
    size = path.stat().st_size
    nb = node_bytes(ANNOY_METRIC[metric], dim)
    where = f"{path} (dim {dim}, metric {metric}, {count} items)"
    if size == 0 or size % nb:
        raise RecembIndexError(
            f"{where}: file size {size} is not a whole number of {nb}-byte nodes; the file is truncated, foreign, "
            f"or of another dimension/metric than the manifest says; {_FIX}"
        )
    n_nodes = size // nb
    if n_nodes < count + 1:
        raise RecembIndexError(f"{where}: only {n_nodes} nodes, fewer than the items plus a root; {_FIX}")
    nodes = np.memmap(path, dtype=np.int32, mode="r", shape=(n_nodes, nb // 4))
    try:
        probe = np.unique(
            np.concatenate([np.arange(min(count, 1024)), np.linspace(0, count - 1, 1024).astype(np.int64)])
        )
        if not (nodes[probe, 0] == 1).all():
            bad = int(probe[np.flatnonzero(nodes[probe, 0] != 1)[0]])
            raise RecembIndexError(
                f"{where}: node {bad} is not an item node; the file is foreign or of another dimension/metric; {_FIX}"
            )
        tail = np.asarray(nodes[max(count, n_nodes - n_trees - 1) :, 0])
        n_roots = _trailing_equal(tail, count)
        if n_roots < n_trees:
            raise RecembIndexError(
                f"{where}: found {n_roots} tree roots over {count} items at the end of the file, the manifest says "
                f"n_trees={n_trees}; the file is truncated, foreign or of another item count; {_FIX}"
            )
    finally:
        del nodes


def _trailing_equal(values: np.ndarray, target: int) -> int:
    """How many of the last entries of ``values`` equal ``target`` (Annoy's root copies)."""
    not_eq = np.flatnonzero(values[::-1] != target)
    return int(not_eq[0]) if not_eq.size else int(values.size)


def load_index(
    index_dir: str | os.PathLike,
    verify: bool = True,
    search_k: int | None = None,
    threads: int = 1,
    embeddings: EmbeddingSet | str | os.PathLike | None = None,
) -> AnnoyIndex:
    """Open an exported index after checking everything Annoy cannot.

    Always checked: manifest schema version, keys, dim/metric agreement, the
    file size against the manifest, and the file's node structure for that
    dim and metric (:func:`check_annoy_file`). With ``verify`` also the
    sha256 of ``items.ann`` (one read of the file). With ``embeddings`` (an
    EmbeddingSet or its directory) also that count, dim and, for a
    directory, its ids' sha256 match what the index was exported from.
    Every failure raises :class:`RecembIndexError` ("re-export with
    `recemb export CONFIG`"); only a file that passes reaches Annoy's mmap.

    Args:
        search_k: override the manifest's search_k for queries.
        threads: threads for a batch ``search``.
    """
    index_dir = Path(index_dir)
    m = read_manifest(index_dir)
    ann_path = index_dir / INDEX_FILE
    check_index_file(
        ann_path, m, verify, lambda p: check_annoy_file(p, m["dim"], m["count"], m["metric"], m["n_trees"])
    )
    if embeddings is not None:
        check_embeddings_match(m, embeddings, where=str(index_dir))
    return AnnoyIndex.open(
        ann_path,
        dim=m["dim"],
        count=m["count"],
        metric=m["metric"],
        n_trees=m["n_trees"],
        search_k=m.get("search_k", -1) if search_k is None else search_k,
        threads=threads,
        search_k_factor=float(m.get("search_k_factor", 1.0)),
    )


def check_embeddings_match(manifest: dict[str, Any], embeddings: EmbeddingSet | str | os.PathLike, where: str) -> None:
    """Raise unless ``embeddings`` is the EmbeddingSet the index was exported from (row i = item i)."""
    if isinstance(embeddings, EmbeddingSet):
        count, dim, sha = len(embeddings), embeddings.dim, None
    else:
        emb_dir = Path(embeddings)
        try:
            em = json.loads((emb_dir / EMB_MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RecembIndexError(f"{emb_dir}: cannot read the EmbeddingSet manifest ({e})") from None
        count, dim, sha = em.get("count"), em.get("dim"), em.get("sha256", {}).get("ids.parquet")
    if count != manifest["count"] or dim != manifest["dim"]:
        raise RecembIndexError(
            f"{where}: index holds {manifest['count']} x {manifest['dim']} but the EmbeddingSet has {count} x {dim}; "
            f"they are from different runs; {_FIX}"
        )
    want = manifest.get("embeddings", {}).get("sha256", {}).get("ids.parquet")
    if sha is not None and want is not None and sha != want:
        raise RecembIndexError(
            f"{where}: the EmbeddingSet's ids.parquet differs from the one the index was exported from "
            f"(rows would map to the wrong ids); {_FIX}"
        )


def embeddings_dir(index_dir: str | os.PathLike) -> Path:
    """The EmbeddingSet directory recorded in an index manifest (Annoy or exact; resolved against ``index_dir``)."""
    m = read_json_object(Path(index_dir) / MANIFEST_FILE, RecembIndexError, _FIX)
    if not isinstance(m.get("embeddings"), dict) or "path" not in m["embeddings"]:
        raise RecembIndexError(f"{index_dir}: the manifest names no EmbeddingSet; {_FIX}")
    return (Path(index_dir) / m["embeddings"]["path"]).resolve()


def embeddings_record(embset_dir: Path, out_dir: Path, emb: EmbeddingSet) -> dict[str, Any]:
    """The manifest's ``embeddings`` entry: where the vectors are (relative to ``out_dir``) and their checksums."""
    try:
        rel = os.path.relpath(embset_dir.resolve(), out_dir.resolve())
    except ValueError:  # different drives (Windows): keep the absolute path
        rel = str(embset_dir.resolve())
    emb_manifest = json.loads((embset_dir / EMB_MANIFEST).read_text())
    return {
        "path": rel,
        "kind": emb.kind,
        "count": len(emb),
        "dim": emb.dim,
        "metric": emb.metric,
        "ids_file": "ids.parquet",
        "sha256": emb_manifest.get("sha256", {}),
    }


def export_all(
    embeddings: dict[str, Path],
    run_dir: Path,
    n_trees: int = 50,
    metric: str | None = None,
    **kwargs: Any,
) -> dict[str, dict]:
    """Export every ``{name: embset_dir}`` to ``<run_dir>/index/<name>/``; returns ``{name: manifest}``.

    ``kwargs`` go to :func:`export_index` (sample, seed, search_k, n_jobs, on_disk, recall_target,
    accept_lower_recall).
    Rebuilding and swapping an index is this call again: each directory is
    replaced atomically, so readers see the old index or the new one.
    """
    out = {}
    for name, emb_dir in embeddings.items():
        out[name] = export_index(emb_dir, Path(run_dir) / "index" / name, n_trees=n_trees, metric=metric, **kwargs)
    return out
