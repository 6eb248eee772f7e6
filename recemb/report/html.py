"""`recemb report`: one self-contained ``<run>/report.html`` for a run.

The page reads whatever the run holds and draws a section per artifact:

==================  ==========================================================
header              ``data/dataset.json`` counts, ``pipeline.json`` stage
                    timings, the resolved config (collapsed)
evaluation          ``eval/metrics.json``: one table per protocol, best value
                    per metric in bold, and a bar chart of Recall@20 (AUC for
                    P-IMP) per model
training            every ``<run>/<model>/metrics.json`` with an ``epochs``
                    list of per-epoch dicts: loss and throughput curves
ANN                 every ``index/<model>/manifest.json``: recall@10 vs exact,
                    trees, size, build time, and measured query latency
embedding map       every EmbeddingSet: 2-D PCA / t-SNE coloured by topic
neighbours          popular items and their top-k cosine neighbours, with
                    titles and thumbnails of ``items.image_path``
==================  ==========================================================

A section whose inputs are missing (or unreadable) shows a one-line note
instead, so the report works after any subset of stages. The page is
self-contained: inline CSS, images as ``data:`` URIs, no scripts and no
links, so it can be mailed or attached to a ticket. Every string that comes
from data (titles, ids, model names) is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from recemb import __version__
from recemb.embeddings import EmbeddingSet, find_embedding_sets
from recemb.errors import RecembError
from recemb.eval.tables import HIDDEN_PREFIXES, TITLES, TRAILING
from recemb.io import atomic_path
from recemb.report import plots
from recemb.report.config import ReportConfig

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
# Metric columns where higher is better: the best value per column is bold.
# (arp/coverage describe popularity bias, not quality; counts and seconds neither.)
HIGHER_IS_BETTER = ("recall@", "ndcg@", "mrr", "auc", "ctr@", "hit_rate@", "precision@", "map@")
# Failures that make one section a note rather than the whole report fail.
_SECTION_ERRORS = (OSError, ValueError, KeyError)


@dataclass
class _Run:
    """What the sections read, loaded lazily and at most once."""

    dir: Path  # the run directory
    data_dir: Path  # its prepared dataset
    config: Mapping[str, Any]  # the resolved pipeline config, as JSON
    opts: ReportConfig
    timings: Mapping[str, Any] | None = None
    projector: dict[str, Path] = field(default_factory=dict)

    @cached_property
    def items(self) -> pl.DataFrame | None:
        from recemb.data import schema

        path = self.data_dir / "items.parquet"
        return schema.read_table(path, "items") if path.exists() else None

    @cached_property
    def popularity(self) -> pl.DataFrame | None:
        """``item_id, n`` (event count), most popular first; None without events."""
        path = self.data_dir / "events.parquet"
        if not path.exists():
            return None
        return (
            pl.scan_parquet(path)
            .group_by("item_id")
            .agg(pl.len().alias("n"))
            .sort(["n", "item_id"], descending=[True, False])
            .collect()
        )

    @cached_property
    def embedding_sets(self) -> dict[str, Path]:
        return find_embedding_sets(self.dir)


# ---------------------------------------------------------------- html bits
def esc(value: Any) -> str:
    """HTML-escaped text (quotes included, so it is also safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table from already-escaped cell HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and (key.startswith("n_") or key in ("queries", "rows")):
            return f"{int(value):,}"
        return f"{value:.2f}" if key.endswith(("_s", "seconds")) else f"{value:.4f}"
    return esc(value)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ sections
def header_section(run: _Run) -> str:
    """Dataset counts, stage timings and the resolved config."""
    parts = []
    meta_path = run.data_dir / "dataset.json"
    if meta_path.exists():
        meta = _read_json(meta_path)
        counts = meta.get("counts", {})
        parts.append(f"<h3>Dataset: {esc(meta.get('name', run.data_dir.name))}</h3>")
        parts.append(_table([esc(k) for k in counts], [[_fmt(k, v) for k, v in counts.items()]], "counts"))
    else:
        parts.append(_note(f"No dataset at {meta_path}: run the data stage (`recemb data prepare`) first."))

    stages, source = run.timings, "this pipeline run"
    if stages is None and (run.dir / "pipeline.json").exists():
        stages, source = _read_json(run.dir / "pipeline.json").get("stages", {}), "pipeline.json"
    if stages:
        # In pipeline order (pipeline.json stores its keys sorted).
        order = list(run.config.get("stages", ()))
        stages = dict(sorted(stages.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        rows = [
            [esc(name), _fmt("seconds", s.get("seconds")), "up to date, skipped" if s.get("skipped") else ""]
            for name, s in stages.items()
        ]
        total = sum(float(s.get("seconds") or 0) for s in stages.values())
        rows.append(["<b>total</b>", f"<b>{total:.2f}</b>", ""])
        parts.append(
            f'<h3>Stage timings <span class="sub">({esc(source)})</span></h3>'
            + _table(["stage", "seconds", ""], rows, "timings")
        )
    else:
        parts.append(_note("No stage timings: pipeline.json is written by `recemb pipeline`."))

    config = yaml.safe_dump(dict(run.config), sort_keys=False, allow_unicode=True)
    parts.append(f"<details><summary>Config</summary><pre>{esc(config)}</pre></details>")
    return "".join(parts)


# Column groups, left to right: metrics.json stores keys sorted, so the order is rebuilt here.
_COLUMN_ORDER = ("auc", "recall@", "ndcg@", "mrr", "ctr@", "hit_rate@", "precision@", "map@")


def _column_key(key: str) -> tuple[int, int, str]:
    group = next((i for i, p in enumerate(_COLUMN_ORDER) if key.startswith(p)), len(_COLUMN_ORDER))
    cut = key.rpartition("@")[2]
    return group, int(cut) if cut.isdigit() else 1 << 30, key


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    # The columns of the printed tables (recemb.eval.tables): bookkeeping hidden, timings last;
    # quality metrics first, then the rest (popularity bias, candidate-list stats).
    keys = {k for row in rows for k in row if k != "model" and k not in TRAILING and not k.startswith(HIDDEN_PREFIXES)}
    return [*sorted(keys, key=_column_key), *[k for k in TRAILING if any(k in r for r in rows)]]


def _higher_is_better(key: str) -> bool:
    return key.startswith(HIGHER_IS_BETTER)


def eval_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """An HTML table of one protocol's rows; the best value of each quality metric in bold."""
    cols = _columns(rows)
    best = {}
    for c in cols:
        values = [r[c] for r in rows if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)]
        if _higher_is_better(c) and values and max(values) > 0:
            best[c] = max(values)
    body = []
    for r in rows:
        cells = [esc(r.get("model", "?"))]
        for c in cols:
            text = _fmt(c, r[c]) if c in r else "-"
            cells.append(f"<b>{text}</b>" if c in best and r.get(c) == best[c] else text)
        body.append(cells)
    return _table(["model", *(esc(c) for c in cols)], body, "metrics")


def _chart_metric(protocol: str, rows: Sequence[Mapping[str, Any]]) -> str | None:
    keys = {k for r in rows for k in r}
    if protocol == "imp" or "auc" in keys:
        return "auc" if "auc" in keys else None
    if "recall@20" in keys:
        return "recall@20"
    recalls = sorted((k for k in keys if k.startswith("recall@") and k[7:].isdigit()), key=lambda k: int(k[7:]))
    return recalls[-1] if recalls else None


def evaluation_section(run: _Run) -> str:
    path = run.dir / "eval" / "metrics.json"
    if not path.exists():
        return _note(f"No evaluation results ({path} is missing): run `recemb evaluate CONFIG`.")
    res = _read_json(path)
    dataset = res.get("dataset", "?")
    parts, charts = [], []
    order = list(TITLES)  # ml, sess, imp, cold as in DESIGN.md §7; metrics.json keys are sorted
    protocols = sorted(
        res.get("protocols", {}).items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)
    )
    for protocol, part in protocols:
        rows = part.get("rows", [])
        split = part.get("split", {})
        extra = f" (catalogue {split['catalogue']:,} items)" if "catalogue" in split else ""
        parts.append(f"<h3>{esc(TITLES.get(protocol, protocol))} · {esc(dataset)}{esc(extra)}</h3>")
        parts.append(eval_table(rows) if rows else _note("no rows"))
        metric = _chart_metric(protocol, rows)
        if metric:
            values = {str(r["model"]): float(r[metric]) for r in rows if isinstance(r.get(metric), (int, float))}
            if values:
                charts.append((TITLES.get(protocol, protocol), metric, values))
    for protocol, why in res.get("skipped", {}).items():
        parts.append(_note(f"{TITLES.get(protocol, protocol)} skipped: {why}"))
    if not parts:
        return _note(f"{path} holds no protocol results.")
    if charts:
        parts.insert(0, _img(plots.data_uri(plots.metric_bars(charts)), "metric per model and protocol"))
    return "".join(parts)


def _epochs(path: Path) -> list[dict[str, Any]] | None:
    try:
        data = _read_json(path)
    except (OSError, ValueError):
        return None
    epochs = data.get("epochs") if isinstance(data, dict) else None
    if isinstance(epochs, list) and epochs and all(isinstance(e, dict) for e in epochs):
        return epochs
    return None


def _series(epochs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which per-epoch keys to plot: losses (up to 3), validation metrics (up to 2), one throughput."""
    numeric: list[str] = []
    for e in epochs:
        numeric += [
            k for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in numeric
        ]
    losses = [k for k in numeric if "loss" in k][:3]
    quality = [k for k in numeric if k.startswith(("val", "recall", "ndcg", "auc")) and k not in losses][:2]
    speed: list[str] = [k for k in ("events_per_s", "examples_per_s", "samples_per_s") if k in numeric]
    speed = speed or [k for k in numeric if k.endswith("_per_s")]
    return losses + quality + speed[:1]


def training_section(run: _Run) -> str:
    parts = []
    for path in sorted(run.dir.glob("*/metrics.json")):
        epochs = _epochs(path)
        if epochs is None:
            continue  # eval/metrics.json and other non-training records
        name = path.parent.name
        series = _series(epochs)
        if not series:
            continue
        last = epochs[-1]
        summary = [f"{len(epochs)} epochs"] + [f"final {k} {_fmt(k, last[k])}" for k in series if k in last]
        parts.append(f"<h3>{esc(name)}</h3><p>{esc(', '.join(summary))}</p>")
        parts.append(_img(plots.data_uri(plots.training_curves(name, epochs, series)), f"{name} training curves"))
    return "".join(parts) or _note(
        "No training history: no <run>/<model>/metrics.json with per-epoch records (run a training stage)."
    )


def _latency_ms(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[float, float]:
    """Median and p99 milliseconds of one-query searches."""
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None, :])
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 99))


def _measure_latency(index_dir: Path, n: int, seed: int) -> dict[str, float]:
    from recemb.index.exact import ExactIndex
    from recemb.index.export import embeddings_dir
    from recemb.index.loading import open_index

    emb = EmbeddingSet.load(embeddings_dir(index_dir))
    ann, _ = open_index(index_dir, verify=False, embeddings=emb)
    exact = ExactIndex(ann.metric).build(np.asarray(emb.vectors))
    rng = np.random.default_rng(seed)
    queries = np.asarray(emb.vectors[np.sort(rng.choice(len(emb), size=min(n, len(emb)), replace=False))])
    a50, a99 = _latency_ms(lambda q: ann.search(q, 10), queries)
    e50, e99 = _latency_ms(lambda q: exact.search(q, 10), queries)
    return {"annoy_p50": a50, "annoy_p99": a99, "exact_p50": e50, "exact_p99": e99}


def _ms(lat: Mapping[str, float], which: str) -> str:
    return f"{lat[which + '_p50']:.3f} / {lat[which + '_p99']:.3f}" if lat else "-"


def _index_params(m: Mapping[str, Any]) -> str:
    """An index manifest's kind and main settings, e.g. ``annoy 50 trees``."""
    kind = m.get("kind", "annoy")
    if kind == "hnsw":
        return f"hnsw m={m.get('m')} ef={m.get('ef_factor')}k"
    if kind == "exact":
        return f"exact {m.get('codec', 'float32')}"
    return f"annoy {m.get('n_trees')} trees x{m.get('search_k_factor', 1)}"


def ann_section(run: _Run) -> str:
    manifests = sorted((run.dir / "index").glob("*/manifest.json"))
    if not manifests:
        return _note("No ANN index in this run: run `recemb export CONFIG`.")
    rows, notes = [], []
    for path in manifests:
        m = _read_json(path)
        if m.get("kind") == "covisit":  # not a vector index: its own table elsewhere
            continue
        lat: dict[str, float] = {}
        if run.opts.latency_queries:
            try:
                lat = _measure_latency(path.parent, run.opts.latency_queries, run.opts.seed)
            except (ImportError, RecembError, OSError) as e:
                notes.append(_note(f"{path.parent.name}: latency not measured ({e})"))
        cert = m.get("certified") or {}
        recall = cert.get("recall", m.get("recall_at_10"))
        rows.append(
            [
                esc(path.parent.name),
                _fmt("count", m.get("count")),
                _fmt("dim", m.get("dim")),
                esc(m.get("metric", "?")),
                esc(_index_params(m)),
                _fmt("recall", recall),
                f"{m.get('file_bytes', m.get('bytes', 0)) / 2**20:.2f}",
                _fmt("build_seconds", m.get("build_seconds")),
                _ms(lat, "annoy"),
                _ms(lat, "exact"),
            ]
        )
    header = [
        "model",
        "items",
        "dim",
        "metric",
        "index",
        "held-out recall@10 vs exact",
        "file MiB",
        "build s",
        "index ms/query p50 / p99",
        "exact ms/query p50 / p99",
    ]
    lead = (
        (
            f"<p>Latency: {run.opts.latency_queries} single-item top-10 queries each, one thread, "
            "measured while this report was built.</p>"
        )
        if run.opts.latency_queries
        else ""
    )
    return lead + _table(header, rows, "ann") + "".join(notes)


def _labels(run: _Run, ids: np.ndarray) -> tuple[list[str], str]:
    """Colour label per id: ``items.topic`` if present, else the first category."""
    items = run.items
    if items is None:
        return ["unknown"] * len(ids), "nothing (no items table)"
    if "topic" in items.columns:
        col, what = pl.col("topic").cast(pl.String), "topic"
    elif items.schema.get("category") == pl.List(pl.String):
        col, what = pl.col("category").list.first(), "first category"
    else:
        return ["unknown"] * len(ids), "nothing (items have no topic or category)"
    table = items.select(pl.col("item_id"), col.alias("label")).unique("item_id", keep="first")
    joined = pl.DataFrame({"item_id": pl.Series(list(ids), dtype=pl.String)}).join(
        table, on="item_id", how="left", maintain_order="left"
    )
    return joined["label"].fill_null("unknown").to_list(), what


def map_section(run: _Run) -> str:
    sets = run.embedding_sets
    if not sets:
        return _note("No EmbeddingSet in this run: train a model first (e.g. `recemb train item2vec CONFIG`).")
    parts = []
    for name, path in sets.items():
        emb = EmbeddingSet.load(path, verify=False)
        rows = np.arange(len(emb))
        if len(rows) > run.opts.map_max_items:
            rng = np.random.default_rng(run.opts.seed)
            rows = np.sort(rng.choice(len(rows), size=run.opts.map_max_items, replace=False))
        labels, what = _labels(run, emb.ids[rows])
        t0 = time.perf_counter()
        points, method = plots.project_2d(
            np.asarray(emb.vectors[rows]), run.opts.projection, run.opts.seed, run.opts.tsne_max_items
        )
        seconds = time.perf_counter() - t0
        title = f"{name}: {len(rows):,} of {len(emb):,} items, {method}, coloured by {what}"
        parts.append(f"<h3>{esc(name)}</h3><p>{esc(title)} ({seconds:.1f} s)</p>")
        parts.append(_img(plots.data_uri(plots.embedding_map(points, labels, title)), title))
    return "".join(parts)


def _image_file(root: Path, rel: str | None) -> Path | None:
    """``root/rel`` if it is an existing file inside ``root`` (a path may not climb out)."""
    if not rel:
        return None
    root = root.resolve()
    path = (root / rel).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def _item_cell(run: _Run, item_id: str, info: Mapping[str, dict[str, Any]], score: float | None = None) -> str:
    row = info.get(item_id, {})
    thumb = ""
    image = _image_file(run.data_dir, row.get("image_path"))
    if image is not None:
        uri = plots.thumbnail(image, run.opts.thumbnail_px)
        if uri:
            thumb = _img(uri, f"image of {item_id}", "thumb")
    title = row.get("title") or ""
    label = f" · {row['label']}" if row.get("label") is not None else ""
    score_html = f'<span class="score">{score:.3f}</span>' if score is not None else ""
    return (
        f'<div class="item">{thumb}<div><span class="title">{esc(title)}</span>'
        f'<span class="id">{esc(item_id + label)}</span>{score_html}</div></div>'
    )


def neighbours_section(run: _Run) -> str:
    sets = run.embedding_sets
    if not sets:
        return _note("No EmbeddingSet in this run, so no neighbours to show.")
    if run.opts.examples == 0:
        return _note("Neighbour examples are off (report.examples = 0).")
    pop = run.popularity
    items = run.items
    info: dict[str, dict[str, Any]] = {}
    if items is not None:
        cols = [c for c in ("item_id", "title", "image_path") if c in items.columns]
        labels, what = _labels(run, items["item_id"].to_numpy())
        table = items.select(cols).with_columns(pl.Series("label", labels, dtype=pl.String))
        if what in ("topic", "first category"):
            table = table.with_columns((pl.lit(what.split()[-1] + " ") + pl.col("label")).alias("label"))
        else:
            table = table.with_columns(pl.lit(None, pl.String).alias("label"))
        info = {r["item_id"]: r for r in table.iter_rows(named=True)}
    parts = []
    k = run.opts.neighbours
    for name, path in sets.items():
        emb = EmbeddingSet.load(path, verify=False)
        order = pop["item_id"].to_list() if pop is not None else list(emb.ids)
        found = emb.lookup(np.asarray(order[: run.opts.examples * 4], dtype=object))
        rows = [int(r) for r in found if r >= 0][: run.opts.examples]
        if not rows:
            parts.append(_note(f"{name}: none of the popular items has a vector."))
            continue
        unit = emb.unit_vectors()  # [N, D]
        sims = unit[rows] @ unit.T  # [Q, N] cosine
        sims[np.arange(len(rows)), rows] = -np.inf  # an item is not its own neighbour
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # [Q, k]
        body = []
        for i, (q, nbrs) in enumerate(zip(rows, top)):
            cells = [_item_cell(run, str(emb.ids[q]), info)]
            cells += [_item_cell(run, str(emb.ids[j]), info, float(sims[i, j])) for j in nbrs]
            body.append(cells)
        what = "most frequent items in the events" if pop is not None else "first items (no events table)"
        parts.append(f"<h3>{esc(name)}</h3><p>{esc(what)}; top-{k} cosine neighbours</p>")
        parts.append(_table(["item", *(f"#{i + 1}" for i in range(k))], body, "neighbours"))
    return "".join(parts)


def projector_section(run: _Run) -> str:
    if not run.projector:
        return _note("No projector export (report.projector is off, or the run has no EmbeddingSet).")
    rows = [[esc(name), f"<code>{esc(path)}</code>"] for name, path in run.projector.items()]
    return (
        "<p>Vectors and metadata TSVs for the TensorBoard embedding projector: "
        "<code>tensorboard --logdir DIR</code> (Projector tab), or load both TSVs into the "
        "standalone projector.</p>" + _table(["model", "directory"], rows, "projector")
    )


def _flat_settings(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out |= _flat_settings(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _best_cell(metric: str, s: dict) -> str:
    """The chosen validation score; where the configured setting was kept, the best trial's beside it."""
    if s["best_score"] is None:
        return "-"
    if s.get("kept_configured"):
        return f"{_fmt(metric, s['best_score'])} (kept; best trial {_fmt(metric, s['top_score'])}, within noise)"
    return _fmt(metric, s["best_score"])


def tuning_section(run: _Run) -> str:
    """``recemb tune``'s search: default vs best validation score per model, score vs settings, progress."""
    folder = run.dir / "tune"
    if not (folder / "summary.json").is_file():
        return _note("No search: run `recemb tune CONFIG` to tune the models on the validation split.")
    summary = _read_json(folder / "summary.json")
    trials = pl.read_parquet(folder / "trials.parquet")
    history = pl.read_parquet(folder / "history.parquet")
    metric = summary["metric"]
    header = [
        "model",
        "trials",
        "completed",
        "stopped early",
        "failed",
        f"configured {metric}",
        f"best {metric}",
        "wall",
    ]
    rows = []
    for model, s in summary["models"].items():
        rows.append(
            [
                esc(model),
                str(s["trials"]),
                str(s["completed"]),
                str(s["stopped"]),
                str(s["error"]),
                _fmt(metric, s["default_score"]) if s["default_score"] is not None else "-",
                _best_cell(metric, s),
                f"{s['seconds']:.0f} s",
            ]
        )
    parts = [
        f"<p>Selected on the validation split of {esc(summary['protocol'])} (the test part is never read); "
        f"{esc(summary['searcher'])} search, {esc(summary['scheduler'])} scheduling. Apply the best settings "
        f"with <code>--overlay {esc(folder / 'best.yaml')}</code>.</p>",
        _table(header, rows),
    ]
    curves = {
        m: (g["at_s"].to_list(), g["score"].to_list())
        for (m,), g in history.group_by("model", maintain_order=True)
        if g.height
    }
    if curves:
        parts.append(_img(plots.data_uri(plots.best_so_far(curves, metric)), "best validation score over time"))
    for (model,), mine in trials.group_by("model", maintain_order=True):
        params = [_flat_settings(json.loads(p)) for p in mine["params"]]
        keys = sorted({k for p in params for k in p})
        settings = {k: [p.get(k) for p in params] for k in keys}
        settings = {k: v for k, v in settings.items() if None not in v and len({str(x) for x in v}) > 1}
        ok = mine["score"].is_finite().to_numpy()
        if not settings or ok.sum() < 2:
            continue
        picked = {k: [v for v, good in zip(vals, ok) if good] for k, vals in settings.items()}
        done = (mine["status"] == "completed").to_numpy()[ok]
        png = plots.score_vs_settings(str(model), picked, mine["score"].to_numpy()[ok], done, metric)
        parts.append(f"<h3>{esc(model)}</h3>" + _img(plots.data_uri(png), f"{model}: score vs settings"))
    return "".join(parts)


SECTIONS: list[tuple[str, str, Callable[[_Run], str]]] = [
    ("header", "Run", header_section),
    ("evaluation", "Evaluation beside baselines", evaluation_section),
    ("training", "Training curves", training_section),
    ("tuning", "Hyper-parameter search (validation split)", tuning_section),
    ("ann", "ANN indexes: recall and latency", ann_section),
    ("map", "Item embedding map", map_section),
    ("neighbours", "Nearest-neighbour examples", neighbours_section),
    ("projector", "Embedding projector export", projector_section),
]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1200px;
 padding:0 16px;color:#222}
h1{font-size:22px;margin-bottom:2px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;
 margin-top:32px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;vertical-align:top}th{background:#f4f4f6;text-align:left}
table.metrics td:not(:first-child),table.counts td,table.timings td:nth-child(2),table.ann td{
 text-align:right;font-variant-numeric:tabular-nums}
.note{color:#777;font-style:italic}.sub{color:#666;font-size:12px}
img.plot{max-width:100%;display:block;margin:8px 0}
img.thumb{width:auto;height:auto;max-height:48px;margin-right:6px;border:1px solid #ccc}
.item{display:flex;align-items:flex-start;max-width:190px}.item .title{display:block}
.item .id{display:block;color:#888;font-size:11px}.item .score{display:block;color:#2a6;font-size:11px}
pre{background:#f7f7f9;padding:8px;overflow:auto;font-size:12px}
"""


def render(run: _Run) -> tuple[str, dict[str, str]]:
    """The page and, per section, "ok" or why it failed."""
    status: dict[str, str] = {}
    body = []
    for key, title, fn in SECTIONS:
        t0 = time.perf_counter()
        try:
            content = fn(run)
            status[key] = "note" if content.startswith('<p class="note">') else "ok"
        except _SECTION_ERRORS as e:
            # A corrupt artifact costs one section, not the report.
            log.warning("report section %s failed: %s", key, e)
            content = _note(f"This section could not be drawn: {type(e).__name__}: {e}")
            status[key] = f"failed: {e}"
        log.info("report: %s %s in %.1fs", key, status[key], time.perf_counter() - t0)
        body.append(f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>')
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>recemb report: {esc(run.dir.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>recemb run report: {esc(run.dir.name)}</h1>"
        f'<p class="sub">{esc(run.dir)} · generated {now} · recemb {esc(__version__)}</p>'
        + "".join(body)
        + "</body></html>\n"
    )
    return page, status


def build_report(
    run_dir: str | Path,
    data_dir: str | Path,
    opts: ReportConfig | None = None,
    *,
    config: Mapping[str, Any],
    timings: Mapping[str, Any] | None = None,
    projector: Mapping[str, Path] | None = None,
) -> Path:
    """Write ``<run>/report.html`` atomically and return its path.

    Args:
        run_dir: the run directory (its name is the report's title).
        data_dir: the run's prepared dataset.
        opts: report options (the ``report:`` section); default ``ReportConfig()``.
        config: the resolved pipeline config as JSON (``config_to_dict(cfg)``): shown in
            the report, and its ``stages`` order the timings.
        timings: stage summaries ``{stage: {"seconds": s, ...}}``; default the run's pipeline.json
            (a report drawn inside ``recemb pipeline`` passes the stages so far).
        projector: ``{model: dir}`` of projector exports to list.
    """
    run = _Run(Path(run_dir), Path(data_dir), config, opts or ReportConfig(), timings, dict(projector or {}))
    return _write(run)[0]


def _write(run: _Run) -> tuple[Path, dict[str, str]]:
    page, status = render(run)
    out = run.dir / REPORT_FILE
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out, status


def run_report(
    run_dir: str | Path,
    data_dir: str | Path,
    opts: ReportConfig | None = None,
    *,
    config: Mapping[str, Any],
    timings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Stage ``report``: projector export per EmbeddingSet, then ``<run>/report.html``.

    Arguments as :func:`build_report`. Returns ``{"report": path, "projector": {model: dir},
    "sections": {name: status}}``.
    """
    from recemb.report.projector import export_projector

    run_dir, data_dir, opts = Path(run_dir), Path(data_dir), opts or ReportConfig()
    exported: dict[str, Path] = {}
    if opts.projector:
        sets = find_embedding_sets(run_dir)
        items_path = data_dir / "items.parquet"
        items = None
        if sets and items_path.exists():
            from recemb.data import schema

            items = schema.read_table(items_path, "items")
        for name, path in sets.items():
            exported[name] = export_projector(path, run_dir / "projector" / name, items)
    out, status = _write(_Run(run_dir, data_dir, config, opts, timings, exported))
    return {"report": str(out), "projector": {k: str(v) for k, v in exported.items()}, "sections": status}
