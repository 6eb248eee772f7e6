"""The run report (recemb.report.html) and the embedding-projector export.

Everything runs on a tiny run built in tmp: a small synthetic dataset, an
EmbeddingSet of topic one-hots plus noise, hand-written training and
evaluation records in the real formats, and a real Annoy index.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recemb.config import build_config, config_to_dict
from recemb.data import schema, synth
from recemb.data.config import SynthConfig
from recemb.embeddings import EmbeddingSet
from recemb.io import write_json
from recemb.report import html as report_html
from recemb.report import plots
from recemb.report.config import ReportConfig
from recemb.report.html import build_report, run_report
from recemb.report.projector import export_projector

INJECTION = '<script>alert("x")</script><img src="http://evil.example/x.png">'
CHINESE = "中文标题：推荐系统"
TOPICS = 4
FAST = ReportConfig(projection="pca", latency_queries=20)


def _config(run_root: Path, name: str = "tiny"):
    return build_config(
        {"run": {"name": name, "dir": str(run_root)}, "stages": ["data", "item2vec", "export", "evaluate", "report"]}
    )


def _eval_metrics() -> dict:
    # The format of recemb.eval.evaluate (keys sorted, as write_json stores them).
    return {
        "dataset": "synth",
        "protocols": {
            "imp": {
                "split": {"catalogue": 60},
                "rows": [
                    {
                        "auc": 0.52,
                        "model": "popularity",
                        "mrr": 0.30,
                        "ndcg@5": 0.37,
                        "n_impressions": 10.0,
                        "queries": 12,
                        "fit_s": 0.01,
                        "score_s": 0.02,
                    },
                    {
                        "auc": 0.71,
                        "model": "item2vec",
                        "mrr": 0.44,
                        "ndcg@5": 0.59,
                        "n_impressions": 10.0,
                        "queries": 12,
                        "fit_s": 3.5,
                        "score_s": 0.5,
                    },
                ],
            },
            "ml": {
                "split": {"catalogue": 60, "test": 50},
                "rows": [
                    {
                        "fit_s": 0.01,
                        "hit_rate@20": 0.2,
                        "model": "popularity",
                        "ndcg@20": 0.07,
                        "queries": 50,
                        "recall@10": 0.10,
                        "recall@20": 0.18,
                        "score_s": 0.1,
                    },
                    {
                        "fit_s": 9.0,
                        "hit_rate@20": 0.5,
                        "model": "item2vec",
                        "ndcg@20": 0.31,
                        "queries": 50,
                        "recall@10": 0.41,
                        "recall@20": 0.5,
                        "score_s": 0.2,
                    },
                ],
            },
        },
        "skipped": {"sess": "the dataset has no sessions"},
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple:
    """A run dir with data, item2vec (embeddings + history), two_tower history, eval and an index."""
    root = tmp_path_factory.mktemp("runs")
    cfg = _config(root)
    data = synth.generate(
        SynthConfig(users=40, items=60, events=1500, topics=TOPICS, impressions=0, image_size=16, seed=0),
        cfg.prepared_dir,
    )
    # Titles that must survive: markup (escaped, never live) and Chinese (UTF-8), with a tab
    # that would break the TSV, on the two most popular items (so they appear as examples).
    top = (
        pl.read_parquet(data / "events.parquet")
        .group_by("item_id")
        .len()
        .sort(["len", "item_id"], descending=[True, False])["item_id"]
        .to_list()[:2]
    )
    items = schema.read_table(data / "items.parquet", "items")
    items = items.with_columns(
        pl.when(pl.col("item_id") == top[0])
        .then(pl.lit(INJECTION + "\tx"))
        .when(pl.col("item_id") == top[1])
        .then(pl.lit(CHINESE))
        .otherwise(pl.col("title"))
        .alias("title")
    )
    schema.write_table(items, data / "items.parquet", "items")

    # Topic one-hot (x3) plus noise: neighbours and the map have a known structure.
    rng = np.random.default_rng(0)
    topic = items["topic"].to_numpy()
    vectors = np.zeros((items.height, 8), dtype=np.float32)
    vectors[np.arange(items.height), topic % 8] = 3.0
    vectors += rng.normal(0, 0.3, vectors.shape).astype(np.float32)
    emb_dir = cfg.run_dir / "item2vec" / "embeddings"
    EmbeddingSet(items["item_id"], vectors, kind="item2vec").save(emb_dir)

    write_json(
        cfg.run_dir / "item2vec" / "metrics.json",
        {
            "train_seconds": 1.0,
            "epochs": [{"epoch": e, "loss": 2.0 / e, "events_per_s": 1e5 + e, "alpha": 0.01} for e in (1, 2, 3)],
        },
    )
    # A later model's generic history: other key names, no "epoch" key.
    write_json(
        cfg.run_dir / "two_tower" / "metrics.json",
        {
            "epochs": [{"train_loss": 5.0 - e, "val_recall@20": 0.1 * e, "examples_per_s": 900.0} for e in range(4)],
        },
    )
    write_json(cfg.run_dir / "eval" / "metrics.json", _eval_metrics())
    write_json(
        cfg.run_dir / "pipeline.json",
        {"stages": {"data": {"seconds": 1.5, "skipped": True}, "item2vec": {"seconds": 2.0}}},
    )
    _tune_outputs(cfg.run_dir / "tune")
    from recemb.index.export import export_index

    export_index(emb_dir, cfg.run_dir / "index" / "item2vec", n_trees=5, sample=20, n_jobs=1)
    result = run_report(cfg.run_dir, cfg.prepared_dir, FAST, config=config_to_dict(cfg))
    return cfg, items, top, result


def _tune_outputs(folder: Path) -> None:
    """A search's outputs in recemb.tune.search's formats: 3 item2vec trials, one stopped early."""
    import json

    settings = [
        {"window": 5, "ns_exponent": 0.75},
        {"window": 3, "ns_exponent": -0.5},
        {"window": 20, "ns_exponent": 0.1},
    ]
    pl.DataFrame(
        {
            "model": ["item2vec"] * 3,
            "trial": ["a", "b", "c"],
            "status": ["completed", "completed", "stopped"],
            "default": [True, False, False],
            "score": [0.03, 0.05, 0.01],
            "configured_score": [0.03, 0.05, 0.01],
            "params": [json.dumps({"item2vec": s}) for s in settings],
        }
    ).write_parquet(folder / "trials.parquet", mkdir=True)
    pl.DataFrame(
        {
            "model": ["item2vec"] * 4,
            "trial": ["a", "b", "c", "a"],
            "epoch": [1, 1, 1, 5],
            "score": [0.01, 0.02, 0.01, 0.03],
            "at_s": [1.0, 2.0, 3.0, 4.0],
        }
    ).write_parquet(folder / "history.parquet")
    write_json(
        folder / "summary.json",
        {
            "protocol": "ml",
            "metric": "ndcg@10",
            "searcher": "random",
            "scheduler": "asha",
            "models": {
                "item2vec": {
                    "trials": 3,
                    "completed": 2,
                    "stopped": 1,
                    "error": 0,
                    "not run": 0,
                    "default_score": 0.03,
                    "best_score": 0.05,
                    "best_settings": {"item2vec": settings[1]},
                    "seconds": 12.0,
                },
                "two_tower": {  # no trial beat the configured setting beyond noise: it was kept
                    "trials": 1,
                    "completed": 1,
                    "stopped": 0,
                    "error": 0,
                    "not run": 0,
                    "default_score": 0.04,
                    "best_score": 0.04,
                    "best_settings": {"two_tower": {"epochs": 4}},
                    "kept_configured": True,
                    "top_score": 0.0412,
                    "seconds": 3.0,
                },
            },
        },
    )


def test_report_is_self_contained_and_fills_every_section(tiny_run):
    cfg, _, _, result = tiny_run
    page = Path(result["report"]).read_text(encoding="utf-8")
    assert Path(result["report"]) == cfg.run_dir / "report.html"
    assert set(result["sections"].values()) == {"ok"}, result["sections"]
    for _, title, _ in report_html.SECTIONS:
        assert f"<h2>{title}</h2>" in page
    for name in ("popularity", "item2vec", "two_tower", "P-ML", "P-IMP"):
        assert name in page
    assert "P-SESS skipped: the dataset has no sessions" in page
    # Self-contained: no remote resources, no scripts, every image inline.
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(srcs) >= 4 + 6 and all(s.startswith("data:image/") for s in srcs)
    assert "kept; best trial 0.0412, within noise" in page  # the tuning table says a setting was kept
    # Thumbnails of the synthetic PNGs next to the neighbour titles.
    assert page.count('class="thumb" src="data:image/png;base64,') >= 6 * 6


def test_titles_are_escaped_and_chinese_survives(tiny_run):
    _, _, _, result = tiny_run
    page = Path(result["report"]).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "evil.example" in page  # shown as text ...
    assert 'src="http://evil' not in page  # ... never as a live attribute
    assert CHINESE in page


def test_report_orders_and_bolds_the_evaluation_table():
    rows = _eval_metrics()["protocols"]["ml"]["rows"]
    table = report_html.eval_table(rows)
    header = re.findall(r"<th>([^<]*)</th>", table)
    assert header == ["model", "recall@10", "recall@20", "ndcg@20", "queries", "fit_s", "score_s"]
    assert "<b>0.4100</b>" in table and "<b>0.5000</b>" in table  # item2vec is best
    assert "<b>0.1000</b>" not in table and "<b>0.1800</b>" not in table
    assert "<b>9.00</b>" not in table  # seconds are not a quality metric
    assert "hit_rate" not in table  # hidden as in the printed tables


def test_projector_files_match_the_embedding_set(tiny_run):
    cfg, items, top, result = tiny_run
    out = Path(result["projector"]["item2vec"])
    assert out == cfg.run_dir / "projector" / "item2vec"
    emb = EmbeddingSet.load(cfg.run_dir / "item2vec" / "embeddings")
    vec = np.loadtxt(out / "vectors.tsv", delimiter="\t", dtype=np.float32)
    assert vec.shape == (len(emb), emb.dim)
    np.testing.assert_allclose(vec, emb.vectors, rtol=1e-6)
    lines = (out / "metadata.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(lines) == len(emb) + 1
    assert lines[0].split("\t") == ["item_id", "title", "category", "topic"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert all(len(r) == 4 for r in rows.values())
    assert list(rows) == list(emb.ids)  # row i of metadata belongs to row i of vectors
    assert rows[top[1]][1] == CHINESE
    assert rows[top[0]][1] == INJECTION + " x"  # the tab became a space
    first = items.filter(pl.col("item_id") == top[1]).row(0, named=True)
    assert rows[top[1]][2] == first["category"][0] and rows[top[1]][3] == str(first["topic"])
    pbtxt = (out / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "vectors.tsv"' in pbtxt and 'metadata_path: "metadata.tsv"' in pbtxt
    assert f"tensor_shape: {len(emb)}" in pbtxt


def test_projector_without_items_writes_ids(tiny_run, tmp_path):
    cfg, _, _, _ = tiny_run
    out = export_projector(cfg.run_dir / "item2vec" / "embeddings", tmp_path / "p", items=None)
    lines = (out / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "item_id\ttitle\tcategory"
    assert lines[1].split("\t")[1:] == ["", ""]
    assert len(lines) == 61


def test_empty_run_gives_notes_not_errors(tmp_path):
    cfg = _config(tmp_path, "empty")
    result = run_report(cfg.run_dir, cfg.prepared_dir, FAST, config=config_to_dict(cfg))
    page = Path(result["report"]).read_text(encoding="utf-8")
    assert result["projector"] == {}
    assert set(result["sections"]) == {key for key, _, _ in report_html.SECTIONS}
    assert all(status in ("ok", "note") for status in result["sections"].values())
    assert "run the data stage" in page
    assert "recemb evaluate CONFIG" in page
    assert "No training history" in page
    assert "recemb tune CONFIG" in page
    assert "recemb export CONFIG" in page
    assert "train a model first" in page
    assert "<details><summary>Config</summary>" in page  # the config is shown whatever ran


def test_corrupt_input_costs_one_section(tmp_path):
    bad = _config(tmp_path, "bad")
    bad.run_dir.mkdir(parents=True)
    (bad.run_dir / "eval").mkdir()
    (bad.run_dir / "eval" / "metrics.json").write_text("{not json")
    path = build_report(bad.run_dir, bad.prepared_dir, FAST, config=config_to_dict(bad))
    page = path.read_text(encoding="utf-8")
    assert "This section could not be drawn: JSONDecodeError" in page
    assert "<h2>Item embedding map</h2>" in page


def test_images_outside_the_dataset_are_not_read(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    assert report_html._image_file(root, "images/a.png") == (root / "images" / "a.png").resolve()
    assert report_html._image_file(root, "../secret.png") is None
    assert report_html._image_file(root, str(tmp_path / "secret.png")) is None
    assert report_html._image_file(root, None) is None


def test_projection_pca_and_tsne_separate_topics():
    rng = np.random.default_rng(0)
    topic = np.repeat(np.arange(3), 30)
    x = np.eye(8, dtype=np.float32)[topic] * 3 + rng.normal(0, 0.2, (90, 8)).astype(np.float32)
    for method in ("pca", "tsne"):
        points, used = plots.project_2d(x, method, seed=0)
        assert points.shape == (90, 2) and used in ("pca", "t-SNE")
        centres = np.stack([points[topic == t].mean(0) for t in range(3)])
        spread = max(np.linalg.norm(points[topic == t] - centres[t], axis=1).mean() for t in range(3))
        gap = min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3))
        assert gap > 2 * spread, method
    assert plots.project_2d(x, "auto", tsne_max_items=50)[1] == "pca"


def test_plots_are_png():
    png = plots.metric_bars([("P-ML", "recall@20", {"a": 0.1, "b": 0.0}), ("P-IMP", "auc", {"a": 0.5})])
    assert png.startswith(b"\x89PNG")
    curves = plots.training_curves("m", [{"loss": 1.0}, {"loss": 0.5, "events_per_s": 10}], ["loss", "events_per_s"])
    assert curves.startswith(b"\x89PNG")
    assert plots.data_uri(b"abc") == "data:image/png;base64,YWJj"
