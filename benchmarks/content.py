"""How fast are the content encoders on CPU, and how well do they place cold items?

1. Texts/s of the hashed n-gram tokenizer and of ``TextEncoder`` (torch
   ``nn.EmbeddingBag`` vs torchrec ``EmbeddingBagCollection``, forward +
   backward), and images/s of decoding (Pillow, DataLoader workers) and of
   the frozen backbones (SmallResNet from scratch at 64 px vs ImageNet
   MobileNetV2 at 224 px), on the ML-100K overviews and posters (falls back
   to the synthetic generator's texts and images when the real data is missing).
2. ``--two-tower``: two-tower training samples/s on ML-100K with each content
   part in the item tower (id + genres; + overviews; + posters through frozen
   MobileNetV2 features; + posters through a SmallResNet trained at 64 px).
3. ``--pcold-folds N``: the P-COLD table on ML-100K, per modality, pooled over
   N disjoint cold folds of 20% of the items: popularity and random beside the
   two-tower with text / image / both and the content encoder aligned to
   item2vec (and its random-vector control); P-ML rows of the same models.

    .venv/bin/python benchmarks/content.py [--items 1600] [--workers 0 2]
    .venv/bin/python benchmarks/content.py --two-tower --pcold-folds 5   # + ~25 min
    .venv/bin/python benchmarks/content.py --pcold-folds 5 --pcold-models two_tower two_tower-text content \
        --pcold-set two_tower.content.pretrained_text=true --pcold-set content.pretrained_text=true \
        --pcold-set content.text=false                           # the MiniLM rows
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from recemb.data.paths import data_dir
from recemb.models.content.image import backbone_features, load_images, make_backbone
from recemb.models.content.text import HashedTokenizer, TextEncoder

WEIGHTS = data_dir() / "weights" / "mobilenet_v2-b0353104.pth"


def items_with_content(n: int):
    """``(texts, image paths, root, source name)`` of up to ``n`` items."""
    from recemb.data.sources import prepare_source

    try:
        ds, extra = prepare_source("movielens-100k")
        items = ds.items.filter(ds.items["image_path"].is_not_null()).head(n)
        # image_path is "images/<id>.jpg" relative to a prepared dataset: link the
        # posters folder as images/ instead of copying it.
        root = Path(tempfile.mkdtemp())
        (root / "images").symlink_to(Path(extra["images"]).resolve())
        texts = (items["title"] + " " + items["text"]).to_list()
        return texts, items["image_path"].to_list(), root, "ML-100K overviews + posters"
    except Exception as e:  # noqa: BLE001 - any missing piece: use synthetic content instead
        print(f"(ML-100K content unavailable: {e}; using synthetic items)")
    from recemb.data.config import SynthConfig
    from recemb.data.dataset import load_dataset
    from recemb.data.synth import generate

    out = Path(tempfile.mkdtemp()) / "synth"
    generate(SynthConfig(users=100, items=n, events=2000, impressions=0), out)
    items = load_dataset(out).items
    return (items["title"] + " " + items["text"]).to_list(), items["image_path"].to_list(), out, "synthetic"


def rate(n: int, fn, repeat: int = 1) -> float:
    fn()  # warm-up (lazy init, first-call allocations)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n * repeat / (time.perf_counter() - t0)


TOWER_PARTS = {
    "id + genres": {},
    "+ overviews (hashed n-grams)": {"text": True},
    "+ posters (MobileNetV2 224px, frozen)": {"image": True, "image_backbone": "mobilenet_v2", "image_size": 224},
    "+ posters (SmallResNet 64px, trained)": {"image": True},
}
PCOLD_MODELS = [
    "two_tower",
    "two_tower-text",
    "two_tower-image",
    "two_tower-both",
    "content",
    "content-image",
    "content-both",
    "content-random",
]


def prepared_ml100k(run_dir: Path, models: list[str], overrides: list[str]):
    """A pipeline config whose prepared ML-100K (posters included) lies under ``run_dir``."""
    from recemb.config import build_config
    from recemb.data.prepare import prepare_dataset

    cfg = build_config(
        {
            "run": {"name": "bench", "dir": str(run_dir)},
            "data": {"source": "movielens-100k"},
            "two_tower": {"content": {"image_backbone": "mobilenet_v2", "image_size": 224}},
            "content": {"image_backbone": "mobilenet_v2", "image_size": 224},
            "eval": {
                "protocols": ["ml", "cold"],
                "baselines": ["popularity", "random"],
                "models": models,
                "content_protocols": ["ml", "cold"],
                "cold_fraction": 0.2,
            },
        },
        overrides,
        "benchmarks/content.py",
    )
    prepare_dataset(cfg.data, cfg.prepared_dir)
    return cfg


def tower_throughput(cfg) -> list[tuple[str, float]]:
    """Training samples/s of one epoch per item-tower setting (feature building excluded)."""
    from recemb.data.dataset import load_dataset
    from recemb.data.splits import leave_last_out
    from recemb.models.two_tower.config import TwoTowerConfig
    from recemb.models.two_tower.features import FeatureSpace, build_examples, item_vocab
    from recemb.train.two_tower import fit_loop

    ds = load_dataset(cfg.prepared_dir)
    train = leave_last_out(ds.events).train
    rows = []
    for name, parts in TOWER_PARTS.items():
        tt = TwoTowerConfig(epochs=1, content=parts)
        space = FeatureSpace(item_vocab(ds.events, ds.items), tt, ds.items, None, ds.root, cfg.content_cache_dir())
        examples = build_examples(train, space)
        _, history = fit_loop(space, examples, tt)
        rows.append((name, (len(examples) // tt.batch_size) * tt.batch_size / history[0]["seconds"]))
    return rows


def pcold_table(cfg, folds: int) -> str:
    from recemb.eval.tables import format_tables
    from recemb.stages.evaluate import evaluate_run as evaluate

    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"cold_folds": folds})})
    columns = ["recall@20", "ndcg@20", "cold_recall@10", "cold_recall@20", "cold_ndcg@20"]
    return format_tables(evaluate(cfg), columns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1600)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--two-tower", action="store_true", help="two-tower samples/s per item-tower content part")
    ap.add_argument("--pcold-folds", type=int, default=0, help="also print the ML-100K P-COLD table (0 = skip)")
    ap.add_argument("--pcold-models", nargs="+", default=PCOLD_MODELS, help="eval.models of the P-COLD table")
    ap.add_argument(
        "--pcold-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the P-COLD run, e.g. two_tower.content.pretrained_text=true",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    texts, paths, root, source = items_with_content(args.items)
    n = len(texts)
    rows: list[tuple[str, float]] = []

    tok = HashedTokenizer(buckets=1 << 18)
    rows.append(("tokenize + hash (texts/s)", rate(n, lambda: tok.encode(texts))))
    ids, offsets = (torch.from_numpy(a) for a in tok.encode(texts))
    for backend in ("torch", "torchrec"):
        enc = TextEncoder(1 << 18, 64, backend=backend, sparse=backend == "torch")

        def step(enc=enc):
            enc.zero_grad(set_to_none=True)
            enc(ids, offsets).sum().backward()

        rows.append((f"TextEncoder {backend} fwd+bwd (texts/s)", rate(n, step, repeat=3)))

    for w in args.workers:
        rows.append((f"decode images, {w} workers (images/s)", rate(n, lambda w=w: load_images(paths, root, 64, w))))
    small, ok = load_images(paths, root, 64)
    if not ok.all():
        raise SystemExit(f"only {int(ok.sum())} of {n} images decoded; the image rows would be meaningless")
    rows.append(
        ("SmallResNet 64px frozen (images/s)", rate(n, lambda: backbone_features(make_backbone("small_resnet"), small)))
    )
    if WEIGHTS.exists():
        big, _ = load_images(paths[:256], root, 224)
        mnet = make_backbone("mobilenet_v2", WEIGHTS)
        rows.append(("MobileNetV2 224px frozen (images/s)", rate(len(big), lambda: backbone_features(mnet, big))))
    else:
        print(f"(no {WEIGHTS}: MobileNetV2 row skipped)")

    print(f"\n{n} items ({source}), {torch.get_num_threads()} torch threads")
    print(f"{'step':<44}{'per second':>12}")
    for name, r in rows:
        print(f"{name:<44}{r:>12,.0f}")
    by = dict(rows)
    t, r = by["TextEncoder torch fwd+bwd (texts/s)"], by["TextEncoder torchrec fwd+bwd (texts/s)"]
    print(f"torchrec EBC / nn.EmbeddingBag: {r / t:.2f}x")
    if "MobileNetV2 224px frozen (images/s)" in by:
        s, m = by["SmallResNet 64px frozen (images/s)"], by["MobileNetV2 224px frozen (images/s)"]
        print(f"SmallResNet 64px / MobileNetV2 224px: {s / m:.1f}x")
    if not (args.two_tower or args.pcold_folds):
        return
    cfg = prepared_ml100k(Path(tempfile.mkdtemp()), args.pcold_models, args.pcold_set)
    if args.two_tower:
        rows = tower_throughput(cfg)
        print("\nTwo-tower training on ML-100K P-ML train (one epoch, torchrec fused, samples/s)")
        print(f"{'item tower':<44}{'samples/s':>12}{'vs id + genres':>16}")
        for name, r in rows:
            print(f"{name:<44}{r:>12,.0f}{r / rows[0][1]:>15.2f}x")
    if args.pcold_folds:
        print()
        print(pcold_table(cfg, args.pcold_folds))


if __name__ == "__main__":
    main()
