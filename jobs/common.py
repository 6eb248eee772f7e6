"""What every job shares: ``--config`` / ``--set`` parsing and Ray start-up."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from recemb.config import PipelineConfig, load_config
from recemb.errors import RecembError


def run_job(description: str, body: Callable[[PipelineConfig], object], argv: list[str] | None = None) -> int:
    """Parse ``--config PATH [--overlay YAML ...] [--set k=v ...]``, join/start Ray, run ``body(cfg)``; exit code."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/quickstart.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--overlay", dest="overlays", action="append", default=[], metavar="YAML")
    ap.add_argument("--address", help="Ray cluster to join (default $RAY_ADDRESS, else start locally)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("recemb").setLevel(logging.INFO)  # torchrec/fbgemm INFO lines would bury ours
    from recemb.ray_runtime import ray_session

    try:
        cfg = load_config(args.config, args.overrides, args.overlays)
        with ray_session(address=args.address):
            result = body(cfg)
    except RecembError as e:
        print(f"job failed: {e}", file=sys.stderr)
        return 2
    if isinstance(result, (str, os.PathLike)):
        print(f"done: {result}")
    return 0
