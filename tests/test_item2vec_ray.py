"""Item2vec as a Ray Train job (recemb.train.item2vec): loop, checkpoints, resume, faults.

Data: a small synthetic dataset (8 topics); quality = the share of an
item's 5 nearest neighbours in its own topic (chance ~1/8). Single-thread
numba runs are deterministic, so the in-process loop must reproduce
``Item2Vec.fit`` bit for bit, and a failed-and-resumed in-process run must
reproduce an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recemb.config import build_config
from recemb.data import synth
from recemb.data.config import SynthConfig
from recemb.data.dataset import load_dataset
from recemb.embeddings import EmbeddingSet
from recemb.errors import ConfigError, RecembError
from recemb.models.item2vec.config import Item2VecConfig
from recemb.models.item2vec.corpus import build_corpus
from recemb.models.item2vec.model import Item2Vec
from recemb.testing import faults
from recemb.train.checkpoints import latest_checkpoint
from recemb.train.item2vec import load_checkpoint, train_item2vec, train_loop, write_corpus
from recemb.train.ray_config import RayTrainConfig

TOPICS = 8
I2V = {"dim": 16, "epochs": 4, "threads": 1, "window": 5, "seed": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("i2v_ray")
    return synth.generate(
        SynthConfig(users=300, items=200, events=20_000, topics=TOPICS, impressions=0, images=False, seed=1),
        root / "data",
    )


def make_cfg(data: Path, run_dir: Path, **i2v):
    return build_config(
        {
            "run": {"name": "t", "dir": str(run_dir)},
            "data": {"prepared": str(data)},
            "item2vec": {**I2V, **i2v},
        }
    )


def run_i2v(cfg, ray: RayTrainConfig, **kw) -> Path:
    """The driver on a pipeline config's sections."""
    return train_item2vec(cfg.item2vec, ray, cfg.prepared_dir, cfg.run_dir, **kw)


def topic_rate(ids: np.ndarray, vectors: np.ndarray, data: Path, k: int = 5) -> float:
    """Share of each item's k nearest neighbours (cosine) in its own topic."""
    items = pl.read_parquet(data / "items.parquet").select("item_id", "topic")
    topic = dict(zip(items["item_id"].to_list(), items["topic"].to_list()))
    t = np.array([topic[i] for i in ids])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    return float((t[top] == t[:, None]).mean())


def read_state(run_dir: Path, name: str = "item2vec") -> dict:
    return load_checkpoint(latest_checkpoint(run_dir / "t" / "ray" / name))[3]


# ------------------------------------------------------------------ in-process
def test_train_loop_in_process_reproduces_item2vec_fit(data, tmp_path):
    cfg = Item2VecConfig(**I2V)
    corpus = build_corpus(load_dataset(data).events)
    write_corpus(corpus, tmp_path / "corpus")
    train_loop(
        {
            "item2vec": cfg.model_dump(mode="json"),
            "corpus_dir": str(tmp_path / "corpus"),
            "experiment_dir": str(tmp_path / "exp"),
            "keep_checkpoints": 2,
        }
    )
    syn0, syn1, vocab, state = load_checkpoint(latest_checkpoint(tmp_path / "exp"))
    plain = Item2Vec(cfg).fit(corpus)
    # Same init, same per-epoch seeds, one thread: the same floats.
    assert vocab.ids.tolist() == plain.vocab.ids.tolist()
    np.testing.assert_array_equal(syn0, plain.vectors)
    assert [h["loss"] for h in state["history"]] == pytest.approx([h["loss"] for h in plain.history])
    assert state["epoch"] == 4 and syn1.shape == syn0.shape == (len(vocab), 16)
    rate = topic_rate(vocab.ids, syn0, data)
    assert rate > 3 / TOPICS, rate  # chance is 1/8


def test_driver_writes_embeddings_metrics_and_keeps_two_checkpoints(data, tmp_path):
    out = run_i2v(make_cfg(data, tmp_path), RayTrainConfig(workers=0))
    emb = EmbeddingSet.load(out / "embeddings")
    assert emb.kind == "item2vec" and emb.dim == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["epochs"]] == [1, 2, 3, 4]
    assert all(h["pairs_per_s"] > 0 and h["events_per_s"] > 0 for h in metrics["epochs"])
    ckpts = sorted(p.name for p in (tmp_path / "t" / "ray" / "item2vec").glob("checkpoint_*"))
    assert ckpts == ["checkpoint_epoch_0003", "checkpoint_epoch_0004"]
    assert (out / "item2vec.w2v").read_text().splitlines()[0] == f"{len(emb)} 16"


def test_in_process_resume_starts_at_next_epoch(data, tmp_path):
    run_i2v(make_cfg(data, tmp_path, epochs=2), RayTrainConfig(workers=0))
    out = run_i2v(make_cfg(data, tmp_path, epochs=4), RayTrainConfig(workers=0))
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["started_at_epoch"] for h in history] == [0, 0, 2, 2]


def test_fault_in_process_resumes_and_matches_uninterrupted_run(data, tmp_path):
    clean = run_i2v(make_cfg(data, tmp_path / "a"), RayTrainConfig(workers=0))
    with faults.inject("train.epoch", tmp_path / "fault.marker", epoch=3):
        faulty = run_i2v(make_cfg(data, tmp_path / "b"), RayTrainConfig(workers=0, max_failures=1))
    history = json.loads((faulty / "metrics.json").read_text())["epochs"]
    assert [h["started_at_epoch"] for h in history] == [0, 0, 2, 2]
    # Restored state + per-epoch seeds: the interrupted run is the same run.
    np.testing.assert_array_equal(
        EmbeddingSet.load(clean / "embeddings").vectors, EmbeddingSet.load(faulty / "embeddings").vectors
    )


def test_fault_beyond_max_failures_is_a_clear_error(data, tmp_path):
    with faults.inject("train.epoch", tmp_path / "fault.marker", epoch=2):
        with pytest.raises(RecembError, match="max_failures=0.*injected fault"):
            run_i2v(make_cfg(data, tmp_path), RayTrainConfig(workers=0))


def test_checkpoint_of_other_settings_is_not_resumed(data, tmp_path, caplog):
    run_i2v(make_cfg(data, tmp_path, epochs=2), RayTrainConfig(workers=0))
    out = run_i2v(make_cfg(data, tmp_path, epochs=3, dim=8), RayTrainConfig(workers=0))
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [h["started_at_epoch"] for h in history] == [0, 0, 0]
    assert "dim=16 (now 8)" in caplog.text
    assert EmbeddingSet.load(out / "embeddings").dim == 8


def test_resume_false_starts_afresh(data, tmp_path):
    run_i2v(make_cfg(data, tmp_path, epochs=2), RayTrainConfig(workers=0))
    out = run_i2v(make_cfg(data, tmp_path, epochs=3), RayTrainConfig(workers=0, resume=False))
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [h["started_at_epoch"] for h in history] == [0, 0, 0]


def test_bad_settings_raise_config_errors(data, tmp_path):
    cfg = make_cfg(data, tmp_path)
    with pytest.raises(ConfigError, match="sync='median'"):
        run_i2v(cfg, RayTrainConfig(workers=0), sync="median")
    with pytest.raises(ConfigError, match="ray.use_gpu needs ray.workers >= 1"):
        run_i2v(cfg, RayTrainConfig(workers=0, use_gpu=True))
    with pytest.raises(ConfigError, match="backend=numba"):
        run_i2v(make_cfg(data, tmp_path, backend="numba"), RayTrainConfig(workers=1, use_gpu=True))


# ------------------------------------------------------------------ Ray Train
def test_ray_one_worker_writes_checkpoints_and_embeddings(data, tmp_path, ray_local):
    out = run_i2v(make_cfg(data, tmp_path, epochs=2), RayTrainConfig(workers=1, cpus_per_worker=1))
    exp = tmp_path / "t" / "ray" / "item2vec"
    assert sorted(p.name for p in exp.glob("checkpoint_epoch_*")) == ["checkpoint_epoch_0001", "checkpoint_epoch_0002"]
    assert EmbeddingSet.load(out / "embeddings").dim == 16
    state = read_state(tmp_path)
    assert state["workers"] == 1 and [h["epoch"] for h in state["history"]] == [1, 2]


@pytest.mark.slow
def test_ray_resume_with_same_name_starts_at_epoch_3(data, tmp_path, ray_local):
    ray_cfg = RayTrainConfig(workers=1, cpus_per_worker=1)
    run_i2v(make_cfg(data, tmp_path, epochs=2), ray_cfg)
    out = run_i2v(make_cfg(data, tmp_path, epochs=4), ray_cfg)
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["started_at_epoch"] for h in history] == [0, 0, 2, 2]
    emb = EmbeddingSet.load(out / "embeddings")
    assert topic_rate(emb.ids, emb.vectors, data) > 3 / TOPICS


@pytest.mark.slow
def test_ray_two_workers_match_one_process_quality(data, tmp_path, ray_local):
    cfg = make_cfg(data, tmp_path, epochs=8)
    one = run_i2v(cfg, RayTrainConfig(workers=0, name="one"))
    two = run_i2v(cfg, RayTrainConfig(workers=2, cpus_per_worker=1, name="two"))
    state = read_state(tmp_path, "two")
    assert state["workers"] == 2 and state["epoch"] == 8
    r1 = topic_rate(*_ids_vectors(one), data)
    r2 = topic_rate(*_ids_vectors(two), data)
    assert r2 > 3 / TOPICS and abs(r1 - r2) < 0.05, (r1, r2)


@pytest.mark.slow
def test_ray_worker_fault_resumes_from_last_checkpoint(data, tmp_path, ray_local):
    cfg = make_cfg(data, tmp_path, epochs=6)
    clean = run_i2v(cfg, RayTrainConfig(workers=2, cpus_per_worker=1, name="clean"))
    # The last rank fails once before epoch 4; the rule reaches the workers through the runner.
    with faults.inject("train.epoch", tmp_path / "fault.marker", epoch=4, rank=1) as marker:
        faulty = run_i2v(cfg, RayTrainConfig(workers=2, cpus_per_worker=1, max_failures=1, name="faulty"))
    history = json.loads((faulty / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    # The retry resumes from the newest checkpoint Ray's controller had registered when rank 1 died:
    # epoch 3's, or epoch 2's when its report was still in flight (Ray Train registers reports
    # asynchronously; seen once in a fast run). Never from scratch.
    starts = [h["started_at_epoch"] for h in history]
    resumed = starts[-1]
    assert resumed in (2, 3) and starts == [0] * resumed + [resumed] * (6 - resumed), starts
    assert marker.exists()
    r_clean = topic_rate(*_ids_vectors(clean), data)
    r_faulty = topic_rate(*_ids_vectors(faulty), data)
    assert abs(r_clean - r_faulty) < 0.05, (r_clean, r_faulty)


def _ids_vectors(out: Path) -> tuple[np.ndarray, np.ndarray]:
    emb = EmbeddingSet.load(out / "embeddings")
    return emb.ids, emb.vectors
