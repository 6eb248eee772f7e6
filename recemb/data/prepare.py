"""Turn the configured source into a prepared dataset directory.

One entry point for the CLI (`recemb data prepare`, `recemb data synth`) and
the pipeline's data stage: it dispatches to the synthetic generator or a
source converter, fills missing session ids by inactivity gap, and writes
the canonical tables atomically. A prepared directory whose recorded data
config equals the requested one is reused (``force=False``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from recemb.data.config import DataConfig
from recemb.data.dataset import META_FILE, write_dataset
from recemb.data.sessions import sessionize
from recemb.io import write_json
from recemb.section import config_to_dict

log = logging.getLogger(__name__)


def _fingerprint(cfg: DataConfig) -> dict:
    return config_to_dict(cfg)


def is_prepared(cfg: DataConfig, out_dir: Path) -> bool:
    """True when ``out_dir`` holds a dataset prepared from exactly this data config."""
    meta_path = Path(out_dir) / META_FILE
    if not meta_path.exists():
        return False
    try:
        return json.loads(meta_path.read_text()).get("data_config") == _fingerprint(cfg)
    except (OSError, json.JSONDecodeError):
        return False


def prepare_dataset(cfg: DataConfig, out_dir: str | Path, *, force: bool = False) -> Path:
    """Prepare ``cfg.source`` into ``out_dir``; return ``out_dir``.

    Skips the work when ``out_dir`` already holds this exact config's output
    (unless ``force``).
    """
    out_dir = Path(out_dir)
    if not force and is_prepared(cfg, out_dir):
        log.info("data: %s is up to date, skipping", out_dir)
        return out_dir
    if cfg.source == "synth":
        from recemb.data import synth

        synth.generate(cfg.synth, out_dir)
        # Recorded last: a crash before this line leaves a dataset that is
        # regenerated on the next run rather than trusted.
        meta_path = out_dir / META_FILE
        write_json(meta_path, {**json.loads(meta_path.read_text()), "data_config": _fingerprint(cfg)})
        return out_dir

    from recemb.data.sources import prepare_source

    ds, extra_files = prepare_source(cfg.source, Path(cfg.path) if cfg.path else None, table=cfg.table)
    if ds.events["session_id"].null_count():
        ds.events = sessionize(ds.events, cfg.sessionize.gap_minutes)
        ds.meta["sessionized"] = {"gap_minutes": cfg.sessionize.gap_minutes}
    ds.meta["data_config"] = _fingerprint(cfg)
    return write_dataset(ds, out_dir, extra_files)
