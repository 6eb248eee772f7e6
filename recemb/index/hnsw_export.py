"""Export an EmbeddingSet to an HNSW index directory, and load one safely.

``export.backend: hnsw`` writes ``<run>/index/<model>/``::

    items.hnsw      hnswlib's graph file; label i = EmbeddingSet row i
    manifest.json   schema_version, kind="hnsw", dim, count, metric, space, m,
                    ef_construction, ef_factor (recall-certified), file_bytes,
                    sha256{items.hnsw}, certified, build_seconds,
                    embeddings{path, kind, count, dim, sha256}, hnswlib_version,
                    code_version

:func:`load_hnsw_index` checks the manifest, the file's size and its header
(:func:`check_hnsw_file`: element count, degree, the vector size its layout
implies, labels and links of a sample of elements) and, with ``verify``, its
sha256, all before hnswlib reads it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from recemb import __version__
from recemb.embeddings import EmbeddingSet
from recemb.index.base import RecallBelowTarget, RecembIndexError
from recemb.index.export import (
    FILE_INDEX_REQUIRED,
    certify_recall,
    check_embeddings_match,
    check_index_file,
    embeddings_dir,
    embeddings_record,
    load_for_export,
    package_version,
)
from recemb.index.hnsw_index import HEADER, HNSW_SPACE, HnswIndex, element_bytes
from recemb.io import atomic_dir, read_checked_manifest, sha256_file, write_json

SCHEMA_VERSION = 1
KIND = "hnsw"
INDEX_FILE, MANIFEST_FILE = "items.hnsw", "manifest.json"
_FIX = "re-export with `recemb export CONFIG`"


def export_hnsw(
    embset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    metric: str | None = None,
    m: int = 16,
    ef_construction: int = 100,
    recall_target: float | None = 0.95,
    accept_lower_recall: bool = False,
    seed: int = 0,
    threads: int = -1,
) -> dict[str, Any]:
    """Build ``out_dir/items.hnsw`` + ``manifest.json`` from an EmbeddingSet, atomically; returns the manifest.

    With ``recall_target`` the search breadth ``ef_factor`` (``ef = ef_factor * k``) is swept
    against exact top-10 on held-out queries and the cheapest that meets it is recorded; when
    none does the export is refused (the old directory stays) unless ``accept_lower_recall``.
    """
    embset_dir, out_dir = Path(embset_dir), Path(out_dir)
    emb, metric = load_for_export(embset_dir, metric)
    with atomic_dir(out_dir) as tmp:
        t0 = time.perf_counter()
        index = HnswIndex(metric, m=m, ef_construction=ef_construction, threads=threads, seed=seed).build(emb.vectors)
        build_seconds = time.perf_counter() - t0
        index.threads = 1  # certify one query thread at a time, as a service answers
        certified = None
        if recall_target is not None:
            certified = certify_recall(index, emb.vectors, recall_target, seed=seed, knob="ef_factor")
            if not certified["met"] and not accept_lower_recall:
                raise RecallBelowTarget(
                    f"{out_dir}: HNSW with m={m}, ef_construction={ef_construction} reaches recall@10 "
                    f"{certified['recall']:.3f} on held-out queries at best (ef {certified['ef']}), below "
                    f"export.recall_target {recall_target}; raise export.hnsw.m or export.hnsw.ef_construction, "
                    "or set export.accept_lower_recall: true; the previous index (if any) is unchanged",
                    certified,
                )
            index.ef_factor = certified["ef_factor"]
        index.save(tmp / INDEX_FILE)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "dim": emb.dim,
            "count": len(emb),
            "metric": metric,
            "space": HNSW_SPACE[metric],
            "m": int(m),
            "ef_construction": int(ef_construction),
            "ef_factor": index.ef_factor,
            "file_bytes": (tmp / INDEX_FILE).stat().st_size,
            "sha256": {INDEX_FILE: sha256_file(tmp / INDEX_FILE)},
            "certified": certified,
            "build_seconds": round(build_seconds, 3),
            "embeddings": embeddings_record(embset_dir, out_dir, emb),
            "hnswlib_version": package_version("hnswlib"),
            "code_version": __version__,
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


_REQUIRED = {**FILE_INDEX_REQUIRED, "m": int, "ef_factor": float}


def read_hnsw_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and check an HNSW index's manifest; raises :class:`RecembIndexError` naming the fix."""
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file():
        raise RecembIndexError(
            f"{path}: missing (an HNSW index directory holds {INDEX_FILE} and {MANIFEST_FILE}); {_FIX}"
        )
    m = read_checked_manifest(
        path, RecembIndexError, _FIX, schema_version=SCHEMA_VERSION, required=_REQUIRED, oldest=SCHEMA_VERSION
    )
    if m["kind"] != KIND:
        raise RecembIndexError(f"{path}: kind {m['kind']!r} is not {KIND!r}; {_FIX}")
    if m["dim"] < 1 or m["count"] < 1 or m["m"] < 2 or not m["ef_factor"] > 0:
        raise RecembIndexError(f"{path}: dim and count must be >= 1, m >= 2 and ef_factor > 0; {_FIX}")
    return m


def check_hnsw_file(path: str | os.PathLike, dim: int, count: int, m: int) -> None:
    """Check that ``path`` is an hnswlib graph of ``count`` elements of ``dim`` floats and degree ``m``.

    Reads the header (the layout it states must be the one ``dim`` and ``m`` imply, else hnswlib
    would read vectors out of bounds), then the label and level-0 links of a sample of elements
    (labels and neighbours must be rows of the index). Costs microseconds on a GB file;
    hnswlib's own load walks the upper levels' link lists.
    """
    path = Path(path)
    if not path.is_file():
        raise RecembIndexError(f"{path}: missing; {_FIX}")
    size = path.stat().st_size
    where = f"{path} (dim {dim}, m {m}, {count} items)"
    if size < HEADER.itemsize:
        raise RecembIndexError(f"{where}: {size} bytes is shorter than hnswlib's header; the file is truncated; {_FIX}")
    h = np.fromfile(path, dtype=HEADER, count=1)[0]
    per = element_bytes(dim, m)
    want = {
        "offset_level0": 0,
        "count": count,
        "m": m,
        "max_m": m,
        "max_m0": 2 * m,
        "bytes_per_element": per,
        "offset_data": 2 * m * 4 + 4,
        "label_offset": 2 * m * 4 + 4 + 4 * dim,
    }
    wrong = {k: int(h[k]) for k, v in want.items() if int(h[k]) != v}
    if wrong:
        raise RecembIndexError(
            f"{where}: the file's header says {wrong}, the manifest implies "
            f"{ {k: want[k] for k in wrong} }; the file is foreign, of another dimension or degree, "
            f"or the manifest was mixed up; {_FIX}"
        )
    if int(h["entry_point"]) >= count or not 0 <= int(h["max_level"]) < 64:
        raise RecembIndexError(f"{where}: entry point or level out of range; the file is corrupt; {_FIX}")
    level0 = HEADER.itemsize + count * per
    if size < level0 + 4 * count:
        raise RecembIndexError(f"{where}: {size} bytes, too short for {count} elements; the file is truncated; {_FIX}")
    nodes = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER.itemsize, shape=(count, per))
    try:
        probe = np.unique(
            np.concatenate([np.arange(min(count, 1024)), np.linspace(0, count - 1, 1024).astype(np.int64)])
        )
        block = np.asarray(nodes[probe])
        labels = block[:, per - 8 :].copy().view("<u8").ravel()
        links = block[:, : 2 * m * 4 + 4].copy().view("<u4")
        n_links = links[:, 0] & 0xFFFF  # the upper bits hold the deletion mark
        targets = np.where(np.arange(2 * m)[None, :] < n_links[:, None], links[:, 1:], 0)
        if (labels >= count).any() or (n_links > 2 * m).any() or (targets >= count).any():
            raise RecembIndexError(
                f"{where}: an element's label or links point outside the index; the file is corrupt; {_FIX}"
            )
    finally:
        del nodes


def load_hnsw_index(
    index_dir: str | os.PathLike,
    verify: bool = True,
    embeddings: EmbeddingSet | str | os.PathLike | None = None,
    threads: int = 1,
) -> HnswIndex:
    """Open an exported HNSW index after checking what hnswlib cannot (module docstring)."""
    index_dir = Path(index_dir)
    m = read_hnsw_manifest(index_dir)
    path = index_dir / INDEX_FILE
    check_index_file(path, m, verify, lambda p: check_hnsw_file(p, m["dim"], m["count"], m["m"]))
    check_embeddings_match(m, embeddings if embeddings is not None else embeddings_dir(index_dir), where=str(index_dir))
    return HnswIndex.open(path, m["dim"], m["count"], m["metric"], m["m"], m["ef_factor"], threads=threads)


def describe(manifest: dict[str, Any]) -> str:
    """One line for the export stage's log."""
    c = manifest.get("certified")
    cert = ""
    if c:
        below = "" if c["met"] else f" (BELOW the target {c['target']}, accepted)"
        cert = f", held-out recall@10 {c['recall']:.3f} at ef {c['ef']}{below}"
    return (
        f"{manifest['metric']}, HNSW m={manifest['m']} ef_construction={manifest['ef_construction']}, "
        f"{manifest['file_bytes'] / 2**20:.1f} MiB, built in {manifest['build_seconds']}s{cert}"
    )
