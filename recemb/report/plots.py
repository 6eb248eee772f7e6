"""Figures of the run report, rendered to PNG bytes and embedded as ``data:`` URIs.

Every function here draws one figure from plain Python/numpy inputs and
returns PNG bytes; :func:`data_uri` turns bytes into a URI an ``<img>`` can
show without any file beside the page. matplotlib runs on the Agg backend
(no display, no GUI toolkit), set before pyplot is imported.

Text drawn into figures is limited to model names, metric names and topic
labels: matplotlib's default font has no CJK glyphs, so item titles (often
Chinese in the synthetic data) live in the HTML tables, not in plots.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never pick a GUI backend on a cluster node

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import EngFormatter

# Colours of the 2-D map beyond this many classes: the rest share "other".
MAX_CLASSES = 20
_DPI = 100
# t-SNE iterations: 250 of early exaggeration + 100 refining. Enough for topic clusters on
# a few thousand items, and ~1 CPU-second per 250 items (the default 1000 is 3x that).
TSNE_ITERATIONS = 350


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` for ``data``: an image the page carries inside itself."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return buf.getvalue()


def metric_bars(charts: Sequence[tuple[str, str, Mapping[str, float]]]) -> bytes:
    """Horizontal bar charts, one panel per ``(title, metric, {model: value})``.

    Bars are sorted so the best model is on top, and labelled with their value.
    """
    n = len(charts)
    ncols = min(n, 2)  # two panels a row: wider rows would shrink in a 1200 px page
    nrows = (n + ncols - 1) // ncols
    height = max(len(values) for _, _, values in charts) * 0.32 + 1.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.8 * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (title, metric, values) in zip(axes.flat, charts):
        items = sorted(values.items(), key=lambda kv: kv[1])
        names = [k for k, _ in items]
        vals = np.array([v for _, v in items], dtype=float)
        colors = ["#c44e52" if i == len(vals) - 1 else "#4c72b0" for i in range(len(vals))]
        ax.barh(np.arange(len(vals)), vals, color=colors)
        ax.set_yticks(np.arange(len(vals)), names, fontsize=8)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=7)
        top = float(np.nanmax(vals)) if len(vals) else 0.0
        ax.set_xlim(0, top * 1.25 if top > 0 else 1.0)
        ax.set_title(f"{title}: {metric}", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def training_curves(name: str, epochs: Sequence[Mapping[str, Any]], series: Sequence[str]) -> bytes:
    """One panel per key in ``series`` (e.g. loss, events_per_s), plotted against the epoch.

    ``epochs`` is a list of per-epoch dicts; an ``epoch`` key gives the x value
    (else the position, 1-based). Epochs missing a key leave a gap.
    """
    x = [float(e.get("epoch", i + 1)) for i, e in enumerate(epochs)]
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 2.8), squeeze=False)
    for ax, key in zip(axes[0], series):
        y = [float(e[key]) if isinstance(e.get(key), (int, float)) else np.nan for e in epochs]
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.4)
        ax.set_title(f"{name}: {key}", fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if key.endswith("_per_s"):
            ax.set_ylim(bottom=0)  # throughput read against zero, not a zoomed band
            ax.yaxis.set_major_formatter(EngFormatter())  # 500k, 1M rather than a 1e6 offset
    fig.tight_layout()
    return _png(fig)


def best_so_far(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], metric: str) -> bytes:
    """One step line per model: the best validation score reached by each second of a search.

    ``curves`` maps a model to ``(seconds since the search began, score)`` of its reports.
    """
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    for name, (at, score) in curves.items():
        order = np.argsort(np.asarray(at, dtype=np.float64))
        x = np.asarray(at, dtype=np.float64)[order]
        y = np.maximum.accumulate(np.asarray(score, dtype=np.float64)[order])
        ax.step(x, y, where="post", label=name, linewidth=1.5)
    ax.set_xlabel("seconds since the search began", fontsize=8)
    ax.set_ylabel(f"best validation {metric}", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def score_vs_settings(
    name: str, settings: Mapping[str, Sequence[Any]], score: Sequence[float], completed: Sequence[bool], metric: str
) -> bytes:
    """One panel per setting: each trial's validation score against its value (filled: completed trials).

    Numeric settings spanning over 20x are drawn on a log axis; others as categories.
    """
    keys = list(settings)
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    y = np.asarray(score, dtype=np.float64)
    done = np.asarray(completed, dtype=bool)
    for ax, key in zip(axes.flat, keys):
        values = list(settings[key])
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            x = np.asarray(values, dtype=np.float64)
            if x.min() > 0 and x.max() > 20 * x.min():
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values})
            x = np.asarray([labels.index(str(v)) for v in values], dtype=np.float64)
            ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30)
        ax.scatter(x[done], y[done], s=18, label="completed")
        ax.scatter(x[~done], y[~done], s=18, facecolors="none", edgecolors="grey", label="stopped early")
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].set_ylabel(f"{name}: {metric}", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def project_2d(
    vectors: np.ndarray, method: str = "pca", seed: int = 0, tsne_max_items: int = 2000
) -> tuple[np.ndarray, str]:
    """``[N, D]`` -> ``([N, 2], method used)``.

    Rows are L2-normalised first (the maps are of cosine embeddings). ``pca``:
    top two right singular vectors of the centred matrix (numpy SVD).
    ``tsne``: scikit-learn t-SNE (PCA initialisation, after reducing to 30
    dims); ``auto``: t-SNE when scikit-learn imports and ``N <= tsne_max_items``,
    else PCA. Deterministic for a fixed ``seed``.
    """
    x: np.ndarray = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    x = x - x.mean(axis=0, keepdims=True)
    if method == "auto":
        method = "tsne" if len(x) <= tsne_max_items and _has_sklearn() and len(x) > 5 else "pca"
    # SVD of the centred data: its right singular vectors are the principal axes.
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    if method == "pca":
        return (x @ vt[:2].T).astype(np.float32), "pca"
    if method != "tsne":
        raise ValueError(f"projection {method!r}: use 'pca', 'tsne' or 'auto'")
    from sklearn.manifold import TSNE

    # t-SNE on 30 principal components: same neighbourhoods, a fraction of the time.
    reduced = x @ vt[: min(30, vt.shape[0])].T
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    # One thread: deterministic, and on a shared machine extra threads only contend.
    tsne = TSNE(
        n_components=2,
        init="pca",
        perplexity=perplexity,
        random_state=seed,
        max_iter=TSNE_ITERATIONS,
        n_jobs=1,
    )
    return tsne.fit_transform(reduced).astype(np.float32), "t-SNE"


def _has_sklearn() -> bool:
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        return False
    return True


def embedding_map(points: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """Scatter of ``points`` ``[N, 2]`` coloured by ``labels`` ``[N]``.

    The :data:`MAX_CLASSES` most frequent labels get their own colour and a
    legend entry; the rest are drawn grey as "other".
    """
    label_arr = np.asarray([str(v) for v in labels], dtype=object)
    names, counts = np.unique(label_arr, return_counts=True)
    top = [str(n) for n in names[np.argsort(-counts, kind="stable")][:MAX_CLASSES]]
    fig, ax = plt.subplots(figsize=(7.5, 6.0))
    rest = ~np.isin(label_arr, top)
    if rest.any():
        ax.scatter(points[rest, 0], points[rest, 1], s=5, c="#bbbbbb", alpha=0.5, linewidths=0, label="other")
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(sorted(top, key=_natural)):
        sel = label_arr == name
        ax.scatter(points[sel, 0], points[sel, 1], s=6, color=cmap(i % 20), alpha=0.75, linewidths=0, label=name)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return _png(fig)


def _natural(s: str) -> tuple[int, Any]:
    # Topic ids sort as numbers (2 before 10), other labels alphabetically.
    return (0, int(s)) if s.lstrip("-").isdigit() else (1, s)


def thumbnail(path: Path, px: int = 48) -> str | None:
    """A ``data:`` URI of the image at ``path`` scaled to fit ``px`` x ``px``; None if unreadable.

    Photos (JPEG sources) are re-encoded as JPEG, everything else as PNG, so
    a poster costs ~2 KB in the page rather than its full-size bytes.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            photo = img.format == "JPEG"
            img.thumbnail((px, px))
            pic = img.convert("RGB") if photo or img.mode not in ("RGB", "RGBA", "L") else img
            buf = io.BytesIO()
            if photo:
                pic.save(buf, format="JPEG", quality=85)
            else:
                pic.save(buf, format="PNG", optimize=True)
    except (OSError, UnidentifiedImageError, ValueError):
        return None  # a missing or corrupt poster leaves an empty cell, not a failed report
    return data_uri(buf.getvalue(), "image/jpeg" if photo else "image/png")
