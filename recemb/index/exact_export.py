"""The exact backend: an index directory searched exactly, over float32 or compressed vectors.

``export.backend: exact`` writes ``<run>/index/<model>/``::

    codes.npy       float16 or int8 ``[N, D]`` (codec float16 / int8; absent for float32)
    scales.npy      float32 ``[N]`` per-row scales (int8 only)
    manifest.json   schema_version, kind="exact", codec, rerank, dim, count, metric,
                    sha256 {file: hex}, bytes (the codes' size), certified (held-out
                    recall@10 against float32 exact search), embeddings {path, ...}

The float32 vectors stay in the EmbeddingSet the manifest points to; a
compressed index reads only the rows it re-ranks from there (memory-mapped).
:func:`load_exact_index` checks everything before searching.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from recemb import __version__
from recemb.embeddings import EmbeddingSet
from recemb.index.base import RecembIndexError
from recemb.index.exact import ExactIndex
from recemb.index.export import (
    HeldOutRecall,
    check_embeddings_match,
    embeddings_dir,
    embeddings_record,
    load_for_export,
)
from recemb.index.quantized import CODECS, QuantizedIndex
from recemb.io import atomic_dir, load_checked_array, read_checked_manifest, sha256_file, write_json

SCHEMA_VERSION = 1
KIND = "exact"
CODES_FILE, SCALES_FILE, MANIFEST_FILE = "codes.npy", "scales.npy", "manifest.json"
_FIX = "re-export with `recemb export CONFIG`"


def export_exact(
    embset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    metric: str | None = None,
    codec: str = "float32",
    rerank: int = 100,
    recall_target: float | None = None,
    accept_lower_recall: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Write an exact index directory for an EmbeddingSet atomically; returns its manifest.

    With ``recall_target`` (and a compressed codec) the index's held-out recall@10 against
    float32 exact search must meet it, or the export is refused (the old directory stays)
    unless ``accept_lower_recall``.
    """
    if codec not in CODECS:
        raise RecembIndexError(f"codec must be one of {CODECS}, got {codec!r}")
    embset_dir, out_dir = Path(embset_dir), Path(out_dir)
    emb, metric = load_for_export(embset_dir, metric)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        sha, size = {}, 0
        if codec == "float32":
            index: ExactIndex = ExactIndex(metric).build(emb.vectors)
        else:
            index = QuantizedIndex(metric, codec, rerank, originals=emb.vectors).build(emb.vectors)
            arrays = {CODES_FILE: index.codes, SCALES_FILE: index.scales}
            files = []
            for name, a in arrays.items():
                if a is not None:  # int8 has scales, float16 none
                    np.save(tmp / name, a)
                    files.append(name)
            sha = {f: sha256_file(tmp / f) for f in files}
            size = sum((tmp / f).stat().st_size for f in files)
        certified = None
        if recall_target is not None and codec != "float32":  # float32: exact by construction
            recall, _ = HeldOutRecall(emb.vectors, metric, seed=seed)(index)
            certified = {"target": recall_target, "k": 10, "recall": recall, "met": recall >= recall_target}
            if not certified["met"] and not accept_lower_recall:
                raise RecembIndexError(
                    f"{out_dir}: {codec} codes with re-rank {rerank} reach recall@10 {recall:.3f} on held-out queries, "
                    f"below export.recall_target {recall_target}; raise export.rerank, use a wider codec, or set "
                    "export.accept_lower_recall: true; the previous index (if any) is unchanged"
                )
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "codec": codec,
            "rerank": int(rerank) if codec != "float32" else 0,
            "dim": emb.dim,
            "count": len(emb),
            "metric": metric,
            "sha256": sha,
            "bytes": size or int(emb.vectors.nbytes),
            "float32_bytes": int(len(emb) * emb.dim * 4),
            "certified": certified,
            "build_seconds": round(time.perf_counter() - t0, 3),
            "embeddings": embeddings_record(embset_dir, out_dir, emb),
            "code_version": __version__,
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


_REQUIRED = {
    "schema_version": int,
    "kind": str,
    "codec": str,
    "rerank": int,
    "dim": int,
    "count": int,
    "metric": str,
    "sha256": dict,
}


def read_exact_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and check an exact index's manifest."""
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file():
        raise RecembIndexError(f"{path}: missing; {_FIX}")
    m = read_checked_manifest(
        path, RecembIndexError, _FIX, schema_version=SCHEMA_VERSION, required=_REQUIRED, oldest=SCHEMA_VERSION
    )
    if m["kind"] != KIND:
        raise RecembIndexError(f"{path}: kind {m['kind']!r} is not {KIND!r}; {_FIX}")
    if m["codec"] not in CODECS or m["rerank"] < 0:
        raise RecembIndexError(f"{path}: unknown codec {m['codec']!r} or negative rerank; {_FIX}")
    return m


def load_exact_index(
    index_dir: str | os.PathLike, verify: bool = True, embeddings: EmbeddingSet | None = None
) -> ExactIndex:
    """Open an exact index (codes memory-mapped), checked against its manifest and EmbeddingSet."""
    index_dir = Path(index_dir)
    m = read_exact_manifest(index_dir)
    emb = embeddings if embeddings is not None else EmbeddingSet.load(embeddings_dir(index_dir), verify=verify)
    check_embeddings_match(m, emb, where=str(index_dir))
    if m["codec"] == "float32":
        return ExactIndex(m["metric"]).build(emb.vectors)
    arrays = {}
    for name, dtype, shape in (
        (CODES_FILE, np.int8 if m["codec"] == "int8" else np.float16, (m["count"], m["dim"])),
        (SCALES_FILE, np.float32, (m["count"],)),
    ):
        if name == SCALES_FILE and m["codec"] != "int8":
            continue
        want = m["sha256"].get(name, "") if verify else None  # a checksum missing from the manifest fails
        arrays[name] = load_checked_array(index_dir / name, dtype, shape, RecembIndexError, _FIX, sha256=want)
    if verify and SCALES_FILE in arrays and not np.isfinite(arrays[SCALES_FILE]).all():
        raise RecembIndexError(f"{index_dir / SCALES_FILE}: NaN or inf scales; {_FIX}")
    index = QuantizedIndex(m["metric"], m["codec"], m["rerank"], originals=emb.vectors)
    return index.attach(arrays[CODES_FILE], arrays.get(SCALES_FILE))


def describe(manifest: dict[str, Any]) -> str:
    """One line for the export stage's log."""
    c = manifest.get("certified")
    saved = manifest["float32_bytes"] / max(manifest["bytes"], 1)
    cert = f", held-out recall@10 {c['recall']:.3f}" if c else ""
    return f"exact {manifest['codec']} ({saved:.1f}x smaller than float32, re-rank {manifest['rerank']}){cert}"
