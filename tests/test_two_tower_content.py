"""Content parts in the two-tower item tower (issue #7): text tokens in the KJT, fusion, cold items."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
import torch
from test_two_tower import needs_torchrec

from recemb.data import synth
from recemb.data.config import SynthConfig
from recemb.data.dataset import load_dataset
from recemb.eval.baselines import PopularityScorer, RandomScorer
from recemb.eval.config import EvalConfig
from recemb.eval.evaluate import protocol_inputs, run_rows
from recemb.eval.model_scorer import ModelScorer
from recemb.models.content.text import HashedTokenizer
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.models.two_tower.features import Collator, FeatureSpace, item_vocab
from recemb.models.two_tower.model import TwoTower

FAST = dict(epochs=3, batch_size=256, mlp=[64], dim=32, embedding_dim=32, history_length=20, seed=0)
TEXT = {"text": True, "buckets": 1 << 12}
IMAGE = {"image": True, "image_size": 16, "image_width": 4}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """500 users, 400 items over 8 topics, 16x16 topic images, 30% Chinese texts."""
    out = tmp_path_factory.mktemp("ttc") / "data"
    synth.generate(
        SynthConfig(
            users=500, items=400, events=20_000, topics=8, impressions=0, image_size=16, chinese_fraction=0.3, seed=5
        ),
        out,
    )
    return out


@pytest.fixture(scope="module")
def ds(synth_dir):
    return load_dataset(synth_dir)


def test_item_batches_carry_the_hashed_text_tokens(ds):
    cfg = TwoTowerConfig(item_categories=False, content=TEXT)
    space = FeatureSpace(item_vocab(ds.events, ds.items), cfg, ds.items)
    assert space.item_keys() == ["item_id", "text"] and space.table_sizes()["text"] == 1 << 12
    rows = np.array([2, 0, 2])
    jf = Collator(space).items(rows)
    assert jf.keys == ("item_id", "text")
    by_id = dict(zip(ds.items["item_id"], (ds.items["title"] + " " + ds.items["text"]).to_list()))
    want, _ = HashedTokenizer(1 << 12).encode([by_id[space.items.ids[r]] for r in rows])
    values, offsets = jf.feature("text")
    assert values.tolist() == want.tolist()
    assert offsets[1:].diff(prepend=offsets[:1]).tolist() == jf.lengths[3:].tolist()


def test_content_needs_an_items_table(ds):
    from recemb.errors import DataValidationError

    with pytest.raises(DataValidationError, match="no items table"):
        FeatureSpace(item_vocab(ds.events), TwoTowerConfig(content=TEXT), items_table=None)


@pytest.mark.parametrize("backend", ["torch", pytest.param("torchrec", marks=needs_torchrec)])
def test_cold_items_get_content_only_vectors(ds, backend):
    cold = ds.items["item_id"].to_list()[::6]
    train = ds.events.filter(~pl.col("item_id").is_in(cold))
    model = TwoTower(TwoTowerConfig(backend=backend, content=TEXT, **FAST)).fit(train, items=ds.items)
    full = model.item_embeddings()
    assert len(full) == ds.items.height  # the items table's cold items are in the catalogue
    only = model.item_embeddings(drop=("item_id",))
    cold_rows = full.lookup(np.array(cold, dtype=object))
    warm_rows = np.setdiff1d(np.arange(len(full)), cold_rows)
    np.testing.assert_allclose(full.vectors[cold_rows], only.vectors[cold_rows], atol=1e-6)
    assert np.abs(full.vectors[warm_rows] - only.vectors[warm_rows]).max() > 1e-3  # warm: their id row counts
    # A cold item's untrained id row plays no part: scrambling the id table leaves it where it was.
    with torch.no_grad():
        model.net.item_tower.sparse.ebc.embedding_bags["item_ids"].weight.normal_()
    np.testing.assert_allclose(model.item_embeddings().vectors[cold_rows], full.vectors[cold_rows], atol=1e-6)


def test_missing_and_corrupt_images_get_the_no_image_vector(synth_dir, tmp_path):
    data = shutil.copytree(synth_dir, tmp_path / "data")
    ds = load_dataset(data)
    paths = ds.items["image_path"].to_list()
    (data / paths[0]).unlink()
    (data / paths[1]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = TwoTowerConfig(item_categories=False, content=IMAGE, **{**FAST, "epochs": 1})
    model = TwoTower(cfg).fit(ds.events, items=ds.items, root=ds.root)
    ok = dict(zip(model.space.items.ids, model.space.content.image_ok))
    ids = ds.items["item_id"].to_list()
    assert not ok[ids[0]] and not ok[ids[1]] and all(ok[i] for i in ids[2:])
    vectors = model.item_embeddings(drop=("item_id",)).vectors
    assert np.isfinite(vectors).all()
    # Without an id and an image there is nothing left: both get the learned "no content" vector.
    rows = model.space.items.lookup(pl.Series(ids[:2]))
    np.testing.assert_allclose(vectors[rows[0]], vectors[rows[1]], atol=1e-6)


def test_text_places_cold_items_on_synth(ds):
    # Categories off, so that only the text can place a cold item: synthetic texts are topic words.
    split, cat = protocol_inputs(ds, "cold", EvalConfig(cold_fraction=0.2))
    base = dict(item_categories=False, **FAST)
    scorers = {
        "random": RandomScorer(0),
        "popularity": PopularityScorer(),
        "id-only": ModelScorer(lambda: TwoTower(TwoTowerConfig(**base)), "id-only"),
        "text": ModelScorer(lambda: TwoTower(TwoTowerConfig(content=TEXT, **base)), "text", side={"items": ds.items}),
    }
    rows = {r["model"]: r for r in run_rows("cold", split, cat, scorers, [10])}
    # Among the 80 cold items (chance: 10/80), and among all 400.
    for metric in ("cold_recall@10", "recall@10"):
        text = rows["text"][metric]
        others = max(rows[m][metric] for m in ("random", "popularity", "id-only"))
        assert text > 2 * others, (metric, {m: r[metric] for m, r in rows.items()})


@needs_torchrec
def test_fused_resume_with_content_gives_same_state(ds, tmp_path):
    cfg = TwoTowerConfig(backend="torchrec", content={**TEXT, **IMAGE}, **{**FAST, "epochs": 2})
    straight = TwoTower(cfg).fit(ds.events, items=ds.items, root=ds.root, checkpoint_dir=tmp_path / "a")
    TwoTower(cfg.model_copy(update={"epochs": 1})).fit(
        ds.events, items=ds.items, root=ds.root, checkpoint_dir=tmp_path / "b"
    )
    resumed = TwoTower(cfg).fit(ds.events, items=ds.items, root=ds.root, checkpoint_dir=tmp_path / "b")
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    np.testing.assert_allclose(resumed.item_embeddings().vectors, straight.item_embeddings().vectors, atol=1e-5)


@pytest.mark.slow
@needs_torchrec
def test_two_workers_build_content_features_and_train(ray_local, synth_dir, tmp_path):
    from recemb.config import build_config
    from recemb.embeddings import EmbeddingSet
    from recemb.train.ray_config import RayTrainConfig
    from recemb.train.two_tower import train_two_tower

    cfg = build_config({"run": {"name": "ttc", "dir": str(tmp_path / "runs")}, "data": {"prepared": str(synth_dir)}})
    section = TwoTowerConfig(backend="torchrec", content={**TEXT, **IMAGE}, **{**FAST, "epochs": 2})
    out = train_two_tower(
        section, RayTrainConfig(workers=2, storage_path=str(tmp_path / "ray")), cfg.prepared_dir, cfg.run_dir
    )
    items = EmbeddingSet.load(out / "embeddings")
    assert len(items) == load_dataset(synth_dir).items.height and np.isfinite(items.vectors).all()
    metrics = (out / "metrics.json").read_text()
    assert '"content_coverage"' in metrics


@pytest.mark.slow
def test_ml100k_cold_items_from_overviews_and_genres_beat_popularity(shared_data):
    from recemb.data.sources import prepare_source
    from recemb.eval.evaluate import pool_folds

    ds = prepare_source("movielens-100k", source_dir=shared_data / "ml-100k")[0]
    assert ds.items["text"].str.len_chars().mean() > 100  # the TMDB overviews are in
    e = EvalConfig(cold_fraction=0.2, cold_folds=5)
    folds = []
    for fold in range(e.cold_folds):  # every user's test item is cold in exactly one fold
        split, cat = protocol_inputs(ds, "cold", e, fold=fold)
        scorers = {
            "popularity": PopularityScorer(),
            "random": RandomScorer(0),
            "two_tower-text": ModelScorer(
                lambda: TwoTower(TwoTowerConfig(content={"text": True})), "two_tower-text", side={"items": ds.items}
            ),
        }
        folds.append(run_rows("cold", split, cat, scorers, [20]))
    rows = {r["model"]: r for r in pool_folds(folds)}
    assert rows["two_tower-text"]["queries"] > 0.99 * ds.events["user_id"].n_unique()  # 2 items fit no fold
    # Ranked among the ~336 cold items of each fold; popularity knows none of them.
    tt = rows["two_tower-text"]["cold_recall@20"]
    assert tt > 2 * max(rows["popularity"]["cold_recall@20"], rows["random"]["cold_recall@20"]), rows
