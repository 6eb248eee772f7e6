"""Export an EmbeddingSet for the TensorBoard embedding projector.

Writes three files to ``out_dir`` (replaced whole, atomically)::

    vectors.tsv              N rows of D tab-separated floats (row i = id i)
    metadata.tsv             header "item_id<TAB>title<TAB>category[<TAB>topic]", then N rows
    projector_config.pbtxt   points TensorBoard at the two TSVs

Open it with ``tensorboard --logdir <out_dir>`` (Projector tab), or load the
two TSVs into https://projector.tensorflow.org ("Load"). The metadata has
more than one column, so the projector expects (and gets) a header row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from recemb.embeddings import EmbeddingSet
from recemb.io import atomic_dir

VECTORS_FILE = "vectors.tsv"
METADATA_FILE = "metadata.tsv"
CONFIG_FILE = "projector_config.pbtxt"
_ROWS = 8192  # rows formatted per write: bounds memory on large sets


def _clean(value: object) -> str:
    # A tab or newline inside a title would shift every later column or row.
    if value is None:
        return ""
    return " ".join(str(value).split())


def metadata_rows(ids: np.ndarray, items: pl.DataFrame | None) -> tuple[list[str], list[list[str]]]:
    """Header and one row per id: item_id, title, first category (and topic when items have one).

    Ids missing from ``items`` get empty fields; ``items=None`` gives ids only.
    """
    header = ["item_id", "title", "category"]
    has_topic = items is not None and "topic" in items.columns
    if has_topic:
        header.append("topic")
    if items is None:
        return header, [[_clean(i), "", ""] for i in ids]
    cols = [pl.col("item_id")]
    cols.append(pl.col("title").cast(pl.String) if "title" in items.columns else pl.lit(None, pl.String).alias("title"))
    if "category" in items.columns and items.schema["category"] == pl.List(pl.String):
        cols.append(pl.col("category").list.first().alias("category"))
    elif "category" in items.columns:
        cols.append(pl.col("category").cast(pl.String))
    else:
        cols.append(pl.lit(None, pl.String).alias("category"))
    if has_topic:
        cols.append(pl.col("topic").cast(pl.String))
    table = items.select(cols).unique("item_id", keep="first")
    joined = pl.DataFrame({"item_id": pl.Series([str(i) for i in ids], dtype=pl.String)}).join(
        table, on="item_id", how="left", maintain_order="left"
    )
    return header, [[_clean(v) for v in row] for row in joined.iter_rows()]


def export_projector(
    embset_dir: str | os.PathLike, out_dir: str | os.PathLike, items: pl.DataFrame | None = None
) -> Path:
    """Write the projector files for the EmbeddingSet at ``embset_dir``; return ``out_dir``.

    Args:
        embset_dir: an EmbeddingSet directory (loaded and verified).
        out_dir: where the three files go; an older export there is replaced.
        items: the canonical items table (``item_id``, ``title``, ``category``
            and optionally ``topic``) for the metadata; None writes ids only.
    """
    emb = EmbeddingSet.load(embset_dir)
    header, rows = metadata_rows(emb.ids, items)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        with open(tmp / VECTORS_FILE, "w", encoding="utf-8") as f:
            for start in range(0, len(emb), _ROWS):
                # float32 has ~7 significant digits; %.7g keeps them without noise.
                np.savetxt(f, np.asarray(emb.vectors[start : start + _ROWS]), fmt="%.7g", delimiter="\t")
        with open(tmp / METADATA_FILE, "w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(header) + "\n")
            f.writelines("\t".join(row) + "\n" for row in rows)
        name = Path(embset_dir).parent.name or emb.kind
        (tmp / CONFIG_FILE).write_text(
            "embeddings {\n"
            f'  tensor_name: "{_clean(name).replace(chr(92), "_").replace(chr(34), "_")}"\n'
            f'  tensor_path: "{VECTORS_FILE}"\n'
            f'  metadata_path: "{METADATA_FILE}"\n'
            f"  tensor_shape: {len(emb)}\n"
            f"  tensor_shape: {emb.dim}\n"
            "}\n",
            encoding="utf-8",
        )
    return out_dir
